//! Payloads made and checked by real Python: a cloudpickled function and pickled inputs, and a
//! check that pickled results unpickle to the expected values (Rust never unpickles).

use std::io::Write;
use std::process::{Command, Stdio};

use agent_proto::{Frame, FrameKind, Item, ItemBatch};
use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes};

/// What Python produced for a job.
#[derive(Debug, Clone)]
pub struct Payloads {
    /// `cloudpickle.dumps(f)`.
    pub function: Bytes,
    /// `pickle.dumps(x, 5)` for each input.
    pub inputs: Vec<Bytes>,
}

impl Payloads {
    /// INPUTS frames of `batch` items each, for inputs `range`.
    pub fn batches(&self, range: std::ops::Range<usize>, batch: usize) -> Vec<Frame> {
        let indices: Vec<usize> = range.collect();
        indices
            .chunks(batch.max(1))
            .map(|chunk| {
                ItemBatch::new(
                    chunk
                        .iter()
                        .map(|i| Item::new(*i as u64, self.inputs[*i].clone()))
                        .collect(),
                )
                .into_frame(FrameKind::Inputs)
            })
            .collect()
    }
}

fn python(script: &str, stdin: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run python3")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin)?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "python3 failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Pickles the function named `f` defined by `source`, and `inputs_expr` (a Python expression
/// giving a list) item by item.
pub fn payloads(source: &str, inputs_expr: &str) -> Result<Payloads> {
    let script = format!(
        r#"
import sys, struct, pickle, cloudpickle
{source}
out = sys.stdout.buffer
fn = cloudpickle.dumps(f)
out.write(struct.pack("<I", len(fn))); out.write(fn)
items = list({inputs_expr})
out.write(struct.pack("<I", len(items)))
for x in items:
    b = pickle.dumps(x, 5)
    out.write(struct.pack("<I", len(b))); out.write(b)
"#
    );
    let mut bytes = Bytes::from(python(&script, b"")?);
    let take = |bytes: &mut Bytes| -> Result<Bytes> {
        if bytes.remaining() < 4 {
            bail!("short python output");
        }
        let len = bytes.get_u32_le() as usize;
        if bytes.remaining() < len {
            bail!("short python output");
        }
        Ok(bytes.split_to(len))
    };
    let function = take(&mut bytes)?;
    if bytes.remaining() < 4 {
        bail!("short python output");
    }
    let count = bytes.get_u32_le() as usize;
    let inputs = (0..count)
        .map(|_| take(&mut bytes))
        .collect::<Result<Vec<_>>>()?;
    Ok(Payloads { function, inputs })
}

/// Checks in Python that each `(index, pickled result)` unpickles to `expected_expr` evaluated
/// with `i` bound to the index; returns how many were checked.
pub fn check_results(results: &[(u64, Bytes)], expected_expr: &str) -> Result<usize> {
    let mut wire = Vec::new();
    for (index, payload) in results {
        wire.extend_from_slice(&index.to_le_bytes());
        wire.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        wire.extend_from_slice(payload);
    }
    let script = format!(
        r#"
import sys, struct, pickle
data = sys.stdin.buffer.read()
pos = checked = 0
while pos < len(data):
    i, n = struct.unpack_from("<QI", data, pos); pos += 12
    got = pickle.loads(data[pos:pos + n]); pos += n
    want = {expected_expr}
    if got != want:
        sys.exit(f"index {{i}}: got {{got!r}}, want {{want!r}}")
    checked += 1
print(checked)
"#
    );
    let out = python(&script, &wire)?;
    let text = String::from_utf8_lossy(&out);
    text.trim()
        .parse()
        .with_context(|| format!("python printed {text:?}"))
}

/// Unpickles each result in Python; each must be a `str` holding JSON, returned parsed (in the
/// order given).
pub fn results_as_json(results: &[(u64, Bytes)]) -> Result<Vec<serde_json::Value>> {
    let mut wire = Vec::new();
    for (_, payload) in results {
        wire.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        wire.extend_from_slice(payload);
    }
    let script = r#"
import sys, struct, pickle, json
data = sys.stdin.buffer.read()
pos = 0
out = []
while pos < len(data):
    (n,) = struct.unpack_from("<I", data, pos); pos += 4
    out.append(json.loads(pickle.loads(data[pos:pos + n]))); pos += n
print(json.dumps(out))
"#;
    let out = python(script, &wire)?;
    serde_json::from_slice(&out).context("python printed no JSON list")
}
