// Validates the WGSL shaders that CubeCL compiled during a run with Tint, the WGSL compiler of
// Chrome's WebGPU (Dawn, through the `webgpu` npm package, on its null backend: no GPU needed).
//
// Why: the tests run wgpu, whose compiler (naga) does not enforce WGSL's uniformity rules for
// barriers, while Tint does; a shader naga accepts can be refused by every Chromium browser.
//
// Usage:
//   CUBECL_DEBUG_LOG=/tmp/cubecl-wgsl.log cargo test --workspace --release
//   node tools/wgsl_check/check.mjs /tmp/cubecl-wgsl.log [--own nystromformer::] [--own-storage-buffers N]
//
// `CUBECL_DEBUG_LOG` makes CubeCL log every kernel it compiles, source included, between
// `[START_KERNEL_COMPILATION]` and `[END_KERNEL_COMPILATION]`. Each distinct source is compiled
// once. A Tint error in a kernel whose name starts with an `--own` prefix fails the check (exit
// 1); errors in other kernels (Burn's and CubeCL's, which this project cannot change) are listed
// and counted. Kernels whose pipelines would exceed WebGPU's guaranteed limits (16 KiB of
// workgroup memory, 256 units per workgroup) are listed too, as information: the kernels size
// themselves from the device's own limits. With `--own-storage-buffers N`, an `--own` kernel that
// binds more than N storage buffers fails the check (the library runs its kernels only on devices
// that bind `KERNEL_STORAGE_BUFFERS`).
//
// `CUBECL_DEBUG_LOG` also sends CubeCL's autotune log to the same file through a second handle,
// and a kernel's entry reaches the file in up to three writes (the header, the source, the
// closing fence): an autotune line can land just before the source or just after its last `}`.
// A source that Tint refuses is therefore compiled again without what lies outside its WGSL
// (`withoutForeignLines`); if that compiles, the kernel counts as checked and is listed as
// recovered, not refused. `selftest.mjs` runs this script on made-up logs, that case included.

import { readFileSync } from 'node:fs';
import { create, globals } from 'webgpu';

const args = process.argv.slice(2);
const own = [];
let logPath;
let ownStorageBuffers = Infinity;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--own') own.push(args[++i]);
  else if (args[i] === '--own-storage-buffers') ownStorageBuffers = Number(args[++i]);
  else logPath = args[i];
}
if (!Number.isFinite(ownStorageBuffers) && ownStorageBuffers !== Infinity) {
  console.error('--own-storage-buffers takes a number');
  process.exit(2);
}
if (!logPath) {
  console.error('usage: node check.mjs LOG [--own PREFIX]...');
  process.exit(2);
}

/** The compiled kernels of a CubeCL compilation log: one `{ name, source }` per distinct source. */
function kernelsOf(log) {
  const bySource = new Map();
  const blocks = log.split('[START_KERNEL_COMPILATION]').slice(1);
  for (const block of blocks) {
    const end = block.indexOf('[END_KERNEL_COMPILATION]');
    // A block cut short (a process that exited while logging) has no end marker.
    if (end < 0) continue;
    const body = block.slice(0, end);
    const name = (body.match(/^name: (.*)$/m) || [, '(unnamed)'])[1].trim();
    const source = body.match(/\nsource:\n```[^\n]*\n([\s\S]*)\n```\s*$/);
    if (!source) continue;
    if (!bySource.has(source[1])) bySource.set(source[1], name);
  }
  return [...bySource].map(([source, name]) => ({ name, source }));
}

const log = readFileSync(logPath, 'utf8');
const kernels = kernelsOf(log);
if (kernels.length === 0) {
  console.error(`${logPath}: no compiled kernel source found (was CUBECL_DEBUG_LOG set?)`);
  process.exit(2);
}

Object.assign(globalThis, globals);
const gpu = create(['backend=null']);
const adapter = await gpu.requestAdapter();
if (!adapter) {
  console.error("Dawn's null adapter is unavailable");
  process.exit(2);
}
// Every optional feature (f16, subgroups) but WebGPU's default limits, so that a pipeline that
// needs more than every device guarantees shows up.
const device = await adapter.requestDevice({ requiredFeatures: [...adapter.features] });
device.addEventListener('uncapturederror', () => {});

const isOwn = (name) => own.some((prefix) => name.startsWith(prefix));
const refused = { own: [], other: [] };
const overLimits = [];
let ownMostStorageBuffers = 0;

/**
 * `source` without the lines before its first WGSL declaration and without what follows the `}`
 * that opens its last line to do so (CubeCL closes each function at the line's start): where a
 * log line written through another handle lands (see the header).
 */
function withoutForeignLines(source) {
  const lines = source.split('\n');
  const declaration =
    /^(@|var\b|enable\b|requires\b|diagnostic\b|struct\b|const\b|const_assert\b|override\b|fn\b|alias\b|\/\/)/;
  const first = lines.findIndex((line) => declaration.test(line));
  const last = lines.findLastIndex((line) => line.startsWith('}'));
  if (first < 0 || last < first) return '';
  return [...lines.slice(first, last), '}'].join('\n');
}

/** Tint's verdict on `source`: its module, or the errors (with their notes) as text. */
async function compile(source) {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code: source });
  const info = await module.getCompilationInfo();
  const moduleError = await device.popErrorScope();
  const errors = info.messages.filter((m) => m.type === 'error');
  if (errors.length === 0 && !moduleError) return { module };
  const lines = source.split('\n');
  // Tint follows each error with notes (type 'info') that trace its cause.
  const detail = errors.length
    ? info.messages
        .filter((m) => m.type !== 'warning')
        .map((m) => `  ${m.lineNum}:${m.linePos} ${m.message}\n    ${(lines[m.lineNum - 1] || '').trim()}`)
        .join('\n')
    : `  ${moduleError.message}`;
  return { detail };
}

const recovered = [];
for (const { name, source } of kernels) {
  let { module, detail } = await compile(source);
  const trimmed = module ? source : withoutForeignLines(source);
  if (trimmed !== source) {
    const again = await compile(trimmed);
    if (again.module) recovered.push(name);
    ({ module, detail } = again);
  }
  if (!module) {
    (isOwn(name) ? refused.own : refused.other).push(`${name}\n${detail}`);
    continue;
  }
  device.pushErrorScope('validation');
  device.createComputePipeline({ layout: 'auto', compute: { module } });
  const pipelineError = await device.popErrorScope();
  if (pipelineError) {
    const message = pipelineError.message.split('\n')[0];
    overLimits.push(`${name}\n  ${message}`);
    // Anywhere in the message: Dawn may name another limit first.
    const buffers = pipelineError.message.match(/number of storage buffers \((\d+)\)/);
    if (buffers && isOwn(name)) {
      ownMostStorageBuffers = Math.max(ownMostStorageBuffers, Number(buffers[1]));
    }
  }
}

/** Prints `entries` ("name\n  first line..."), one line per distinct entry with its count. */
function printGrouped(heading, entries) {
  if (entries.length === 0) return;
  const counts = new Map();
  for (const entry of entries) {
    const [name, first] = entry.split('\n');
    const key = `${name}\n    ${first.trim().replace(/^\d+:\d+ /, '')}`;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  console.log(`\n${heading}`);
  for (const [key, count] of counts) console.log(`  ${count} × ${key}`);
}

console.log(`${kernels.length} distinct kernels compiled by Tint`);
if (recovered.length) {
  console.log(
    `${recovered.length} of them compiled once the log lines around their source were left out ` +
      `(another handle's writes): ${[...new Set(recovered)].join(', ')}`,
  );
}
printGrouped(
  `${overLimits.length} whose pipeline needs more than WebGPU's default limits:`,
  overLimits,
);
// Mostly the device's native extensions (64-bit integers, float atomics) that CubeCL uses where
// the adapter offers them, as lavapipe does; CubeCL compiles without them for a browser.
printGrouped(
  `${refused.other.length} refused by Tint outside ${own.join(', ') || '(no --own)'}:`,
  refused.other,
);
let failed = false;
const ownCompiled = kernels.filter(({ name }) => isOwn(name)).length;
if (own.length && ownCompiled === 0) {
  // A renamed crate or a new log format would otherwise pass with nothing checked.
  console.log(`\nno kernel of ${own.join(', ')} in the log: nothing of this project was checked`);
  failed = true;
} else if (own.length) {
  console.log(`\n${ownCompiled} of the distinct kernels are ${own.join(', ')}'s`);
}
if (refused.own.length) {
  console.log(`\n${refused.own.length} of this project's kernels refused by Tint:`);
  for (const entry of refused.own) console.log(entry);
  failed = true;
}
if (ownMostStorageBuffers > ownStorageBuffers) {
  console.log(
    `\none of this project's kernels binds ${ownMostStorageBuffers} storage buffers, ` +
      `more than --own-storage-buffers ${ownStorageBuffers}`,
  );
  failed = true;
}
if (failed) process.exit(1);
console.log(`\nno kernel of ${own.join(', ') || '(no --own)'} refused`);
process.exit(0);
