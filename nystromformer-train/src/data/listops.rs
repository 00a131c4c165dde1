//! ListOps (Long Range Arena): a seeded generator following LRA's rules and a reader for the
//! TSV files LRA released (`basic_train.tsv`, …), which the generator also writes.
//!
//! A tree is a value 0–9 or an operator (`MIN`, `MAX`, `MED` = median rounded down, `SM` = sum
//! mod 10) over 2–10 arguments; LRA writes `[MAX 2 9 ]` wrapped in `(` `)` pairs.
//!
//! LRA's input pipeline tokenizes with `tfds.deprecated.text.Tokenizer()`, which keeps
//! alphanumeric runs only: every bracket vanishes, `]` included, and the model sees `MAX 2 9`
//! ([`ListopsTokens::Lra`], the task the paper's accuracies are measured on).
//! [`ListopsTokens::Bracketed`] keeps `]`, which tells the model where each operator ends: an
//! easier task. Token ids are the same in both (`]` is never produced by the first).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::SequenceItem;
use super::rng::SplitMix64;
use crate::config::ListopsTokens;

/// Token strings by id; id 0 is padding.
pub const VOCAB: [&str; 16] = [
    "<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM", "]",
];

/// Number of token ids, padding included.
pub const VOCAB_SIZE: usize = VOCAB.len();
/// Number of classes.
pub const NUM_CLASSES: usize = 10;

/// Operators of the language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Median, rounded down.
    Med,
    /// Sum modulo 10.
    Sm,
}

impl Op {
    const ALL: [Op; 4] = [Op::Min, Op::Max, Op::Med, Op::Sm];

    fn token(self) -> &'static str {
        match self {
            Op::Min => "[MIN",
            Op::Max => "[MAX",
            Op::Med => "[MED",
            Op::Sm => "[SM",
        }
    }
}

/// An expression tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    /// A digit.
    Value(u8),
    /// An operator and its arguments.
    Apply(Op, Vec<Tree>),
}

/// The generator's parameters (LRA: depth 10, 2–10 arguments, lengths in (500, 2000)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratorConfig {
    /// Trees stop growing at this depth.
    pub max_depth: usize,
    /// Most arguments of one operator.
    pub max_args: usize,
    /// Token counts must be strictly greater than this.
    pub min_len: usize,
    /// Token counts must be strictly smaller than this.
    pub max_len: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_args: 10,
            min_len: 500,
            max_len: 2000,
        }
    }
}

impl Tree {
    /// Grows a random tree by LRA's rule: a value with probability 0.75 (always at
    /// `max_depth`), otherwise an operator with 2..=`max_args` arguments.
    pub fn random(rng: &mut SplitMix64, depth: usize, config: &GeneratorConfig) -> Tree {
        if depth >= config.max_depth || rng.unit() < 0.75 {
            return Tree::Value(rng.range(0, 9) as u8);
        }
        let args = rng.range(2, config.max_args);
        let op = Op::ALL[rng.range(0, 3)];
        Tree::Apply(
            op,
            (0..args)
                .map(|_| Tree::random(rng, depth + 1, config))
                .collect(),
        )
    }

    /// Token count: values, operators and closing brackets.
    pub fn len(&self) -> usize {
        match self {
            Tree::Value(_) => 1,
            Tree::Apply(_, args) => 2 + args.iter().map(Tree::len).sum::<usize>(),
        }
    }

    /// Whether the tree has no tokens (never: a tree has at least one).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The tree's value.
    pub fn value(&self) -> u8 {
        match self {
            Tree::Value(v) => *v,
            Tree::Apply(op, args) => {
                let mut values: Vec<u8> = args.iter().map(Tree::value).collect();
                match op {
                    Op::Min => *values.iter().min().unwrap(),
                    Op::Max => *values.iter().max().unwrap(),
                    Op::Sm => (values.iter().map(|v| *v as u32).sum::<u32>() % 10) as u8,
                    Op::Med => {
                        values.sort_unstable();
                        let n = values.len();
                        if n % 2 == 1 {
                            values[n / 2]
                        } else {
                            ((values[n / 2 - 1] as u32 + values[n / 2] as u32) / 2) as u8
                        }
                    }
                }
            }
        }
    }

    /// The tree as LRA writes it: `( ( [MAX 2 ) 9 ) ]`-style nesting.
    pub fn to_lra_string(&self) -> String {
        match self {
            Tree::Value(v) => v.to_string(),
            Tree::Apply(op, args) => {
                // LRA folds `(op, a0), a1, …, END` into left-nested pairs, each in parentheses.
                let mut text = format!("( {} {} )", op.token(), args[0].to_lra_string());
                for arg in &args[1..] {
                    text = format!("( {text} {} )", arg.to_lra_string());
                }
                format!("( {text} ] )")
            }
        }
    }
}

/// Generates `count` examples whose lengths lie strictly between the bounds.
pub fn generate(count: usize, seed: u64, config: &GeneratorConfig) -> Vec<(Tree, String)> {
    examples(seed, config).take(count).collect()
}

/// The endless stream of examples [`generate`] takes from: trees by LRA's rules whose lengths
/// lie strictly between the bounds, each with its LRA text. One at a time, so that a caller that
/// keeps only token ids never holds 96 000 trees.
pub fn examples(seed: u64, config: &GeneratorConfig) -> impl Iterator<Item = (Tree, String)> {
    let mut rng = SplitMix64::new(seed);
    let config = *config;
    std::iter::from_fn(move || {
        loop {
            // LRA grows trees from depth 1 (`generate_tree(1, …)`), so values appear at depth 10.
            let tree = Tree::random(&mut rng, 1, &config);
            let len = tree.len();
            if len > config.min_len && len < config.max_len {
                let text = tree.to_lra_string();
                return Some((tree, text));
            }
        }
    })
}

/// Turns a `Source` string into token ids, as `tokens` says.
pub fn tokenize(source: &str, tokens: ListopsTokens) -> Result<Vec<u32>, String> {
    let id = |token: &str| {
        VOCAB
            .iter()
            .position(|known| *known == token)
            .filter(|id| *id > 0)
            .map(|id| id as u32)
            .ok_or_else(|| format!("unknown token \"{token}\""))
    };
    match tokens {
        // tfds' Tokenizer(alphanum_only=True): runs of [A-Za-z0-9_] are the tokens.
        ListopsTokens::Lra => source
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|word| !word.is_empty())
            .map(|word| match word {
                "MIN" | "MAX" | "MED" | "SM" => id(&format!("[{word}")),
                _ => id(word),
            })
            .collect(),
        ListopsTokens::Bracketed => source
            .split_whitespace()
            .filter(|token| *token != "(" && *token != ")")
            .map(id)
            .collect(),
    }
}

/// Reads an LRA ListOps TSV (`Source\tTarget` header, one example per line), tokenized as
/// `tokens` says. Errors name the file and line.
pub fn read_tsv(path: &Path, tokens: ListopsTokens) -> Result<Vec<SequenceItem>, String> {
    let file = std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut items = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let at = |message: String| format!("{}:{number}: {message}", path.display());
        let line = line.map_err(|err| at(err.to_string()))?;
        if index == 0 && line.trim_end() == "Source\tTarget" {
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (source, target) = line
            .rsplit_once('\t')
            .ok_or_else(|| at("expected `Source<TAB>Target`".into()))?;
        let label: u8 = target
            .trim()
            .parse()
            .ok()
            .filter(|label| *label < 10)
            .ok_or_else(|| at(format!("target \"{}\" is not a digit 0-9", target.trim())))?;
        let ids = tokenize(source, tokens).map_err(at)?;
        if ids.is_empty() {
            return Err(at("empty source".into()));
        }
        items.push(SequenceItem {
            tokens: ids,
            label: label as u32,
        });
    }
    Ok(items)
}

/// Writes examples as an LRA TSV (the same format [`read_tsv`] reads).
pub fn to_tsv(examples: &[(Tree, String)]) -> String {
    let mut out = String::from("Source\tTarget\n");
    for (tree, text) in examples {
        let _ = writeln!(out, "{text}\t{}", tree.value());
    }
    out
}
