//! Segment indices past `n·m = 2³¹`, where `⌊j·m/n⌋` computed as written overflows a 32-bit
//! Int (the Int dtype of the GPU backends). The `[m, n]` averaging weights of such a length do
//! not fit in memory here (8 GiB at m = 64), so the stage that overflowed is tested alone, in
//! 32-bit Ints on flex, against u64 arithmetic on the host.

use burn::tensor::{Device, Int, IntDType, Tensor};
use nystromformer::attention::landmarks::segment_index;

#[test]
fn segment_indices_stay_exact_past_two_to_the_thirty_one() {
    let device = Device::flex();
    let m: u64 = 64;
    let n: u64 = (1 << 31) / m + 12_345; // n·m just past 2³¹
    let rank = Tensor::<1, Int>::arange(0..n as i64, &device)
        .cast(IntDType::I32)
        .reshape([1, n as usize]);
    let length = Tensor::<2, Int>::full([1, 1], n as i64, &device).cast(IntDType::I32);
    let got: Vec<i64> = segment_index(rank, length, m as usize)
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    assert_eq!(got.len(), n as usize);
    let wrong: Vec<u64> = (0..n)
        .filter(|j| got[*j as usize] as u64 != j * m / n)
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "tokens {wrong:?} got segments {:?}, expected {:?}",
        wrong.iter().map(|j| got[*j as usize]).collect::<Vec<_>>(),
        wrong.iter().map(|j| j * m / n).collect::<Vec<_>>()
    );
}

/// Ragged lengths: every valid length from 1 to 300 against every m up to 70, with the
/// boundaries where `r·m/L` is an exact integer, which an f32 estimate alone can miss.
#[test]
fn segment_indices_are_exact_for_every_small_length() {
    let device = Device::flex();
    for m in 1..=70usize {
        let lengths: Vec<i64> = (1..=300).collect();
        let n = 300;
        let rank = Tensor::<1, Int>::arange(0..n as i64, &device)
            .reshape([1, n])
            .expand([lengths.len(), n]);
        let length =
            Tensor::<1, Int>::from_data(lengths.as_slice(), &device).reshape([lengths.len(), 1]);
        let got: Vec<i64> = segment_index(rank, length, m)
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        for (row, l) in lengths.iter().enumerate() {
            for r in 0..*l as usize {
                assert_eq!(
                    got[row * n + r],
                    (r * m) as i64 / l,
                    "rank {r} of {l} tokens, m = {m}"
                );
            }
        }
    }
}
