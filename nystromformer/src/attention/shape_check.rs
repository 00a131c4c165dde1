//! Shape checks at the public entry points, so that a wrong shape is reported by the name of the
//! argument instead of failing deep inside Burn or reading out of bounds in a kernel.

/// Panics unless `actual` starts with `expected`, naming `op` and the argument; `expected` may
/// leave out trailing dimensions, which are then free (shown as `_`).
pub(crate) fn expect_shape(op: &str, name: &str, actual: &[usize], expected: &[usize]) {
    if actual.len() < expected.len() || actual[..expected.len()] != *expected {
        let free = ", _".repeat(actual.len().saturating_sub(expected.len()));
        let expected = format!("{expected:?}");
        panic!(
            "{op}: {name} has shape {actual:?}, expected {}{free}]",
            &expected[..expected.len() - 1]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::expect_shape;

    #[test]
    fn matching_shapes_and_prefixes_pass() {
        expect_shape("op", "x", &[2, 3, 4], &[2, 3, 4]);
        expect_shape("op", "x", &[2, 3, 4], &[2, 3]);
    }

    #[test]
    #[should_panic(expected = "op: x has shape [2, 3, 4], expected [2, 5, _]")]
    fn a_wrong_dimension_names_the_argument_and_the_free_ones() {
        expect_shape("op", "x", &[2, 3, 4], &[2, 5]);
    }
}
