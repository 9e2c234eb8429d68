//! Memory of an idle raft group: the struct itself plus its heap, measured with a
//! counting allocator over many groups so a node's cost per hosted range is known.
//!
//! Run: `cargo run --release -p ostrakon-raft --example idle_group_size`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use ostrakon_raft::{Config, GroupId, InitialState, NodeId, RawNode};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const GROUPS: u64 = 10_000;

fn main() {
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut groups: Vec<RawNode> = Vec::with_capacity(GROUPS as usize);
    let after_vec = LIVE_BYTES.load(Ordering::Relaxed);
    for group in 0..GROUPS {
        let config = Config::new(NodeId(1), GroupId(group));
        groups.push(
            RawNode::new(config, InitialState::bootstrap(voters), group).expect("valid config"),
        );
    }
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let heap_per_group = (after - after_vec) as f64 / GROUPS as f64;
    let inline = std::mem::size_of::<RawNode>();
    println!("idle 3-voter follower group: {inline} bytes inline + {heap_per_group:.0} bytes heap = {:.0} bytes", inline as f64 + heap_per_group);
    println!(
        "({GROUPS} groups: {:.1} MiB in all)",
        (after - before) as f64 / (1 << 20) as f64
    );
    assert!(!groups.is_empty());
}
