// Runs check.mjs on made-up CubeCL compilation logs and asserts its verdict on each, so that a
// checker that passes everything (or nothing) fails CI before the tests' log is judged.
//
// Usage: node tools/wgsl_check/selftest.mjs   (exit 0 when every case gives what it should)

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const check = new URL('./check.mjs', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'wgsl-selftest-'));

/** One entry of a compilation log, as CubeCL's `CompiledKernel` writes it. */
const entry = (name, source) =>
  `[START_KERNEL_COMPILATION]\nname: ${name}\nid: KernelId { .. }\nsource:\n\`\`\`wgsl\n${source}\n\`\`\`\n[END_KERNEL_COMPILATION]\n\n`;

const valid = `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) i: u32) {
    a[i] = a[i] + 1.0;
}`;
// A barrier under a branch taken from a value that may differ between units: naga takes it,
// Tint refuses it (what `cube_sum` did before it read its total with `workgroupUniformLoad`).
const nonUniformBarrier = `@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) i: u32) {
    if (a[i] > 0.0) {
        workgroupBarrier();
    }
}`;
// More storage buffers than WebGPU's default limit of 8, which is when Dawn counts them.
const tenBuffers = `${[...Array(10).keys()]
  .map((b) => `@group(0) @binding(${b}) var<storage, read_write> b${b}: array<f32>;`)
  .join('\n')}
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) i: u32) {
    b0[i] = ${[...Array(9).keys()].map((b) => `b${b + 1}[i]`).join(' + ')};
}`;
const autotuneLine = 'matmul_naive: The autotune is skipped manually.';

const cases = [
  {
    what: 'a valid kernel of ours passes',
    log: entry('nystromformer::kernels::valid', valid),
    exit: 0,
  },
  {
    what: 'a barrier under non-uniform control flow in our kernel fails',
    log: entry('nystromformer::kernels::barrier', nonUniformBarrier),
    exit: 1,
    says: "'workgroupBarrier' must only be called from uniform control flow",
  },
  {
    what: "the same barrier in someone else's kernel is listed, not failed",
    log: entry('nystromformer::kernels::valid', valid) + entry('burn::other', nonUniformBarrier),
    exit: 0,
    says: 'refused by Tint outside nystromformer::',
  },
  {
    what: 'autotune lines written around a valid source are left out',
    log: entry(
      'nystromformer::kernels::interleaved',
      `${autotuneLine}\n| Name | Duration |\n${valid}${autotuneLine}\nKernelId { .. }\n`,
    ),
    exit: 0,
    says: 'compiled once the log lines around their source were left out',
  },
  {
    what: 'leaving the autotune lines out does not excuse a real error',
    log: entry('nystromformer::kernels::barrier', `${autotuneLine}\n${nonUniformBarrier}${autotuneLine}`),
    exit: 1,
    says: "'workgroupBarrier' must only be called from uniform control flow",
  },
  {
    what: 'our kernel binding more storage buffers than allowed fails',
    log: entry('nystromformer::kernels::buffers', tenBuffers),
    args: ['--own-storage-buffers', '9'],
    exit: 1,
    says: 'binds 10 storage buffers',
  },
  {
    what: 'the same kernel within the allowance passes',
    log: entry('nystromformer::kernels::buffers', tenBuffers),
    args: ['--own-storage-buffers', '10'],
    exit: 0,
  },
  {
    what: 'a log without any kernel of ours fails',
    log: entry('burn::other', valid),
    exit: 1,
    says: 'nothing of this project was checked',
  },
  {
    what: 'an entry cut short (no end marker) is skipped, not judged',
    log: entry('nystromformer::kernels::valid', valid) + `[START_KERNEL_COMPILATION]\nname: nystromformer::cut\nsource:\n\`\`\`wgsl\nfn`,
    exit: 0,
  },
];

let failures = 0;
cases.forEach((c, index) => {
  const log = join(dir, `case-${index}.log`);
  writeFileSync(log, c.log);
  const run = spawnSync(process.execPath, [check, log, '--own', 'nystromformer::', ...(c.args || [])], {
    encoding: 'utf8',
  });
  const output = `${run.stdout}${run.stderr}`;
  const problems = [];
  if (run.status !== c.exit) problems.push(`exit ${run.status}, expected ${c.exit}`);
  if (c.says && !output.includes(c.says)) problems.push(`output lacks "${c.says}"`);
  if (problems.length) {
    failures++;
    console.log(`FAIL ${c.what}: ${problems.join('; ')}\n${output.replace(/^/gm, '    ')}`);
  } else {
    console.log(`ok   ${c.what}`);
  }
});
rmSync(dir, { recursive: true });
if (failures) {
  console.log(`\n${failures} of ${cases.length} cases failed`);
  process.exit(1);
}
console.log(`\nall ${cases.length} cases gave what they should`);
