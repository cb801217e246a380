//! The process-wide wasmtime engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Engine-wide settings, fixed for the life of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Kernel instances that may exist at once across all kernels (pool slots).
    pub max_instances: u32,
    /// Largest linear memory any kernel may ask for, in MiB (a kernel's `memory_mb` above this
    /// is refused at load).
    pub max_memory_mb: u64,
    /// Count fuel, so that kernels with `limits.fuel` can be given a budget. Costs some speed for
    /// every kernel, so it is on only when some kernel asks for it.
    pub fuel: bool,
    /// How often the epoch advances: a running guest yields (or, past its deadline, is
    /// interrupted) at this granularity.
    pub epoch_tick: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_mb: 512,
            fuel: false,
            epoch_tick: Duration::from_millis(1),
        }
    }
}

/// The engine and its epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct HostEngine {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<HostConfig>,
    stop: Arc<AtomicBool>,
}

impl HostEngine {
    /// Builds the engine: pooling allocator sized by `config`, epoch interruption, optional fuel.
    pub fn new(config: HostConfig) -> wasmtime::Result<Self> {
        let slots = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .table_elements(200_000)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20)
            .max_memory_size(usize::try_from(config.max_memory_mb << 20).unwrap_or(usize::MAX))
            // A fresh instance per message means a slot is freed per message: reset the first
            // pages with memset instead of returning them to the kernel (no page faults on the
            // next message), batch the remaining decommits, and use PAGEMAP_SCAN where the
            // kernel has it (Linux ≥ 6.7) to reset only the pages that were touched.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .decommit_batch_size(64)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut wasm = Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(config.fuel)
            .parallel_compilation(true)
            .wasm_component_model(true);
        let engine = Engine::new(&wasm)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker, tick, flag) = (engine.clone(), config.epoch_tick, stop.clone());
        std::thread::Builder::new()
            .name("ck-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker.increment_epoch();
                }
            })?;
        Ok(Self {
            engine,
            config: Arc::new(config),
            stop,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for HostEngine {
    fn drop(&mut self) {
        // The last handle stops the ticker thread.
        if Arc::strong_count(&self.stop) == 1 {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}
