//! Kernel launches per attention call on a CubeCL device: how many kernels one forward, and one
//! forward + backward, issue for each implementation, counted by CubeCL's launch observer after
//! a warm-up pass (so that compilation and autotuning are not counted). On a GPU a launch costs a
//! few microseconds whatever its size, so at the bench shape the count bounds the time from
//! below.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Distribution, Int, Tensor};
use cubecl::logging::{LaunchObservation, LaunchObserver};

use crate::implementations::Implementation;
use crate::sweep::Shape;

/// Launches per kernel name.
#[derive(Default)]
struct Counter(Mutex<BTreeMap<&'static str, usize>>);

impl LaunchObserver for Counter {
    fn launched(&self, kernel: &'static str) {
        *self.0.lock().expect("counter").entry(kernel).or_default() += 1;
    }
}

/// The launches of one pass of `implementation` at `shape` (forward, or forward + backward of
/// the output's sum), per kernel name; with `padded`, the last tenth of each sequence is
/// padding (a mask, which the landmarks and `B · V` then take).
pub fn count(
    implementation: Implementation,
    shape: Shape,
    backward: bool,
    padded: bool,
    device: &Device,
) -> BTreeMap<&'static str, usize> {
    let device = if backward {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    let dims = [shape.batch, shape.heads, shape.n, shape.head_dim];
    let input = || {
        let t = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        if backward { t.require_grad() } else { t }
    };
    let (q, k, v) = (input(), input(), input());
    let n = shape.n;
    let mask_pad = padded.then(|| {
        Tensor::<1, Int>::arange(0..n as i64, &device)
            .greater_equal_elem((n - n / 10) as i64)
            .reshape([1, n])
            .expand([shape.batch, n])
    });
    device.sync().expect("device sync");
    let pass = || {
        let out = implementation.run(
            q.clone(),
            k.clone(),
            v.clone(),
            shape.landmarks,
            mask_pad.as_ref(),
        );
        if backward {
            let _grads = out.sum().backward();
        }
        device.sync().expect("device sync");
    };
    pass();
    observe(pass).1
}

/// Runs `f` (which must finish its device work before it returns) and counts the kernels it
/// launches, per kernel name.
pub fn observe<R>(f: impl FnOnce() -> R) -> (R, BTreeMap<&'static str, usize>) {
    let counter = Arc::new(Counter::default());
    let watching = LaunchObservation::new(counter.clone());
    let result = f();
    drop(watching);
    let counter = Arc::into_inner(counter).expect("the observation is dropped");
    (result, counter.0.into_inner().expect("counter"))
}
