//! Measures what placing a worker in a slot costs on this host: create, move, remove.
use std::time::Instant;

use fleetmap_sandbox::{detect, CgroupConfig, CgroupMode, SlotLimits};

fn main() {
    let cg = detect(
        &CgroupConfig {
            root: "/sys/fs/cgroup".into(),
            parent: "fleetmap/cost".into(),
        },
        CgroupMode::Required,
    )
    .expect("cgroups");
    let mut child = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .expect("sleep");
    let pid = child.id();
    cg.enter_pool(pid).expect("pool");
    let limits = SlotLimits {
        cpus: vec![0],
        ram_bytes: 1 << 30,
    };
    let (mut c, mut m, mut r) = (0f64, 0f64, 0f64);
    let n = 200;
    for i in 0..n {
        let id = format!("b{i}");
        let t = Instant::now();
        cg.create_slot(&id, &limits).expect("create");
        let t1 = Instant::now();
        cg.move_into_slot(&id, pid).expect("move");
        let t2 = Instant::now();
        cg.enter_pool(pid).expect("back");
        let t3 = Instant::now();
        cg.remove_slot(&id).expect("remove");
        let t4 = Instant::now();
        c += (t1 - t).as_secs_f64();
        m += (t2 - t1).as_secs_f64();
        r += (t4 - t3).as_secs_f64();
    }
    cg.create_slot("re", &limits).expect("create");
    let t = Instant::now();
    for i in 0..n {
        let l = SlotLimits {
            cpus: vec![(i % 2) as u32],
            ram_bytes: (1 << 30) + (i as u64) * 4096,
        };
        cg.create_slot("re", &l).expect("relimit");
    }
    println!(
        "re-limit {:.0} µs",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    cg.remove_slot("re").ok();
    println!(
        "create {:.0} µs, move {:.0} µs, remove {:.0} µs",
        c / n as f64 * 1e6,
        m / n as f64 * 1e6,
        r / n as f64 * 1e6
    );
    child.kill().ok();
    child.wait().ok();
    cg.cleanup_stale().ok();
}
