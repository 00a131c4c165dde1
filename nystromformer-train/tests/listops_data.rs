//! ListOps data: generator properties checked by an evaluator written independently of the
//! generator, the reader on LRA's format (malformed lines included), and the batcher's masks.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::Device;
use nystromformer_train::config::ListopsTokens;
use nystromformer_train::data::SequenceItem;
use nystromformer_train::data::batcher::{ClassificationBatcher, PAD, Padding};
use nystromformer_train::data::listops::{
    GeneratorConfig, VOCAB, generate, read_tsv, to_tsv, tokenize,
};

/// Evaluates a token sequence with a stack — no tree, no shared code with the generator.
fn evaluate(tokens: &[u32]) -> u8 {
    let mut stack: Vec<(Option<&str>, Vec<u32>)> = vec![(None, Vec::new())];
    for &id in tokens {
        match VOCAB[id as usize] {
            op if op.starts_with('[') => stack.push((Some(op), Vec::new())),
            "]" => {
                let (op, args) = stack.pop().unwrap();
                let mut sorted = args.clone();
                sorted.sort();
                let value = match op.unwrap() {
                    "[MIN" => sorted[0],
                    "[MAX" => sorted[sorted.len() - 1],
                    "[SM" => args.iter().sum::<u32>() % 10,
                    "[MED" => {
                        let n = sorted.len();
                        if n % 2 == 1 {
                            sorted[n / 2]
                        } else {
                            (sorted[n / 2 - 1] + sorted[n / 2]) / 2
                        }
                    }
                    other => panic!("unknown operator {other}"),
                };
                stack.last_mut().unwrap().1.push(value);
            }
            digit => stack.last_mut().unwrap().1.push(digit.parse().unwrap()),
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced expression");
    stack[0].1[0] as u8
}

#[test]
fn generated_examples_respect_lengths_and_labels() {
    let config = GeneratorConfig {
        min_len: 30,
        max_len: 300,
        ..GeneratorConfig::default()
    };
    let examples = generate(300, 7, &config);
    assert_eq!(examples.len(), 300);
    let mut labels = [0usize; 10];
    for (tree, text) in &examples {
        let tokens = tokenize(text, ListopsTokens::Bracketed).unwrap();
        assert_eq!(tokens.len(), tree.len(), "token count is the tree's length");
        assert!(
            tokens.len() > 30 && tokens.len() < 300,
            "length {} out of (30, 300)",
            tokens.len()
        );
        assert_eq!(
            evaluate(&tokens),
            tree.value(),
            "label disagrees with an independent evaluator: {text}"
        );
        labels[tree.value() as usize] += 1;
    }
    assert!(
        labels.iter().filter(|count| **count > 0).count() >= 5,
        "labels are varied: {labels:?}"
    );
    // The same seed gives the same data; another seed does not.
    assert_eq!(generate(5, 7, &config), examples[..5].to_vec());
    assert_ne!(generate(5, 8, &config), examples[..5].to_vec());
}

#[test]
fn default_generator_follows_lra_bounds() {
    for (tree, _) in generate(5, 1, &GeneratorConfig::default()) {
        assert!(tree.len() > 500 && tree.len() < 2000);
    }
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("listops-{name}-{}.tsv", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn reader_takes_lra_files_and_generator_output() {
    // A line as LRA released it: parentheses, brackets, header.
    let lra = "Source\tTarget\n( ( ( ( [MAX 2 ) 9 ) ( ( [MIN 4 ) 7 ) ] ) 0 ) ]\t9\n";
    let path = scratch("lra", lra);
    let items = read_tsv(&path, ListopsTokens::Bracketed).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].label, 9);
    assert_eq!(evaluate(&items[0].tokens), 9);

    let examples = generate(
        20,
        3,
        &GeneratorConfig {
            min_len: 10,
            max_len: 80,
            ..GeneratorConfig::default()
        },
    );
    let path = scratch("roundtrip", &to_tsv(&examples));
    let items = read_tsv(&path, ListopsTokens::Bracketed).unwrap();
    std::fs::remove_file(&path).ok();
    for ((tree, text), item) in examples.iter().zip(&items) {
        assert_eq!(item.label, tree.value() as u32);
        assert_eq!(
            item.tokens,
            tokenize(text, ListopsTokens::Bracketed).unwrap()
        );
    }
}

#[test]
fn malformed_lines_name_file_and_line() {
    let cases = [
        (
            "Source\tTarget\n[MAX 1 2 ]\t2\n[MAX 1 2 ]\n",
            ":3: expected `Source<TAB>Target`",
        ),
        (
            "Source\tTarget\n[MAX 1 2 ]\t12\n",
            ":2: target \"12\" is not a digit",
        ),
        (
            "Source\tTarget\n[MAX 1 2 ]\t2\n[FOO 1 ]\t1\n",
            ":3: unknown token \"[FOO\"",
        ),
        ("Source\tTarget\n( )\t1\n", ":2: empty source"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = scratch(&format!("bad{i}"), text);
        let err = read_tsv(&path, ListopsTokens::Bracketed).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        assert!(err.contains(expected), "{err} should contain {expected}");
    }
}

#[test]
fn batcher_pads_to_the_longest_and_masks_padding() {
    let items = vec![
        SequenceItem {
            tokens: vec![12, 2, 3, 15],
            label: 2,
        },
        SequenceItem {
            tokens: vec![5],
            label: 4,
        },
        SequenceItem {
            tokens: (0..10).map(|_| 3).collect(),
            label: 2,
        },
    ];
    let batcher = ClassificationBatcher {
        padding: Padding::to_longest(6),
    };
    let batch = batcher.batch(items, &Device::flex());
    assert_eq!(
        batch.tokens.dims(),
        [3, 6],
        "padded to the longest, capped at max_len"
    );
    let ids: Vec<i64> = batch
        .tokens
        .to_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    let pad: Vec<bool> = batch.mask_pad.to_data().try_into_vec().unwrap();
    assert_eq!(&ids[..6], &[12, 2, 3, 15, PAD as i64, PAD as i64]);
    assert_eq!(&pad[..6], &[false, false, false, false, true, true]);
    assert_eq!(&pad[6..12], &[false, true, true, true, true, true]);
    assert!(
        pad[12..].iter().all(|p| !p),
        "a cut sequence has no padding"
    );
    let labels: Vec<i64> = batch
        .labels
        .to_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    assert_eq!(labels, vec![2, 4, 2]);
}

#[test]
fn lra_tokens_drop_every_bracket_as_lra_does() {
    // LRA's released line; its tokenizer keeps alphanumeric runs only.
    let lra = "Source\tTarget\n( ( ( ( [MAX 2 ) 9 ) ( ( [MIN 4 ) 7 ) ] ) 0 ) ]\t9\n";
    let path = scratch("lra-tokens", lra);
    let items = read_tsv(&path, ListopsTokens::Lra).unwrap();
    std::fs::remove_file(&path).ok();
    let words: Vec<&str> = items[0]
        .tokens
        .iter()
        .map(|id| VOCAB[*id as usize])
        .collect();
    assert_eq!(words, ["[MAX", "2", "9", "[MIN", "4", "7", "0"]);
    assert_eq!(items[0].label, 9);

    // Generated text: the LRA tokens are the bracketed ones without `]`.
    let close = VOCAB.iter().position(|token| *token == "]").unwrap() as u32;
    for (_, text) in generate(20, 5, &GeneratorConfig::default()) {
        let bracketed = tokenize(&text, ListopsTokens::Bracketed).unwrap();
        let without: Vec<u32> = bracketed.into_iter().filter(|id| *id != close).collect();
        assert_eq!(tokenize(&text, ListopsTokens::Lra).unwrap(), without);
    }
    let err = tokenize("( [MAX 1 x ] )", ListopsTokens::Lra).unwrap_err();
    assert!(err.contains("unknown token \"x\""), "{err}");
}

#[test]
fn trees_start_at_depth_one_as_in_lra() {
    // LRA: `generate_tree(1, …)` with a value forced at depth 10, so at most 9 operators nest.
    // Nesting counted on the tokens, independently of the generator's tree.
    let mut deepest = 0;
    for (_, text) in generate(200, 11, &GeneratorConfig::default()) {
        let mut depth = 0usize;
        for id in tokenize(&text, ListopsTokens::Bracketed).unwrap() {
            match VOCAB[id as usize] {
                op if op.starts_with('[') => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                "]" => depth -= 1,
                _ => {}
            }
        }
    }
    assert_eq!(deepest, 9, "operators nest at most 9 deep, and do reach it");
}
