//! A job through the real coordinator and daemon returns every index exactly once with the
//! right values, whichever way the inputs arrive.

use std::collections::HashSet;
use std::time::Duration;

use agent_proto::{Frame, FrameKind, JobState};
use fleetmap_e2e::{job_id, prelude, python, spec, whole_job, Cluster, Collected};
use http::{Method, StatusCode};

const SOURCE: &str = "def f(x):\n    return x * 3 + 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_inputs_come_back_once_each_with_their_values() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let payloads = python::payloads(SOURCE, "range(10000)")?;
    let id = job_id("tenk");
    // Like the Python client: the first half in the submission body, which then ends without
    // INPUTS_END; the rest, and INPUTS_END, through POST /v1/jobs/{id}/inputs.
    let mut first = prelude(&spec(&id, 10_000), &payloads.function);
    first.extend(payloads.batches(0..5000, 500));
    let (body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    drop(body);
    let mut rest = Vec::new();
    for frame in payloads.batches(5000..10_000, 700) {
        rest.extend_from_slice(&frame.encode());
    }
    rest.extend_from_slice(&Frame::empty(FrameKind::InputsEnd).encode());
    let (status, answer) = cluster
        .http
        .call(
            Method::POST,
            &format!("{}/v1/jobs/{id}/inputs", cluster.coordinator.url),
            rest.into(),
        )
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer:?}");

    let frames = stream.until_end(Duration::from_secs(120)).await?;
    let collected = Collected::from_frames(&frames)?;
    assert!(collected.failures.is_empty(), "{:?}", collected.failures);
    assert_eq!(collected.each_index_once()?, 10_000);
    let end = collected.end.as_ref().expect("END");
    assert_eq!(
        (end.state, end.done, end.failed),
        (JobState::Completed, 10_000, 0)
    );
    assert_eq!(
        python::check_results(&collected.results, "i * 3 + 1")?,
        10_000
    );

    let record = cluster.get(&format!("/v1/jobs/{id}")).await?;
    assert_eq!(record["state"], "completed");
    assert_eq!(record["inputs"], 10_000);
    assert_eq!(record["done"], 10_000);
    assert!(record["finished_at_ms"].as_u64().is_some());
    let listed = cluster.get("/v1/jobs").await?;
    assert_eq!(listed[0]["job_id"], id.as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_streams_inputs_while_results_come_back() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let payloads = python::payloads(SOURCE, "range(300)")?;
    let id = job_id("duplex");
    let mut first = prelude(&spec(&id, 300), &payloads.function);
    first.extend(payloads.batches(0..100, 100));
    let (body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let mut collected = Collected::default();
    let mut batches = payloads.batches(100..300, 100).into_iter();
    // Each further batch goes out only after the previous batch's results came back on the
    // same request: this only finishes if both directions stream at once.
    while collected.end.is_none() {
        let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await??
            .expect("stream goes on until END");
        collected.add(&frame)?;
        let answered = collected.results.len();
        if frame.kind == FrameKind::Results && answered % 100 == 0 && answered > 0 {
            match batches.next() {
                Some(batch) => body.frame(&batch).await?,
                None => body.frame(&Frame::empty(FrameKind::InputsEnd)).await?,
            }
        }
    }
    assert_eq!(collected.each_index_once()?, 300);
    assert_eq!(collected.end.map(|e| e.state), Some(JobState::Completed));
    let indices: HashSet<u64> = collected.results.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..300).collect());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_output_is_forwarded_with_its_input() -> anyhow::Result<()> {
    let cluster = Cluster::start(1).await?;
    let payloads = python::payloads(
        "def f(x):\n    print('hello', x)\n    return x\n",
        "range(5)",
    )?;
    let id = job_id("print");
    let first = whole_job(&spec(&id, 5), &payloads, 0..5, 5);
    let (_body, mut stream) = cluster
        .http
        .submit(&cluster.coordinator.url, &first)
        .await?;
    let frames = stream.until_end(Duration::from_secs(60)).await?;
    let outputs: Vec<agent_proto::Output> = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Output)
        .map(agent_proto::Output::from_frame)
        .collect::<Result<_, _>>()?;
    for index in 0..5u64 {
        let text: String = outputs
            .iter()
            .filter(|o| o.index == index)
            .map(|o| String::from_utf8_lossy(&o.text).into_owned())
            .collect();
        assert_eq!(text, format!("hello {index}\n"));
    }
    Ok(())
}
