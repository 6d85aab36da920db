//! Runs an SLB packed model on the board: parses the embedded model, plans it, and classifies
//! each embedded test image in a static arena, raising LED0 (an `embedded-hal` output pin) while
//! inference runs.
//!
//! Output (semihosting), one record a line, parsed by `tests/mcu_qemu/harness.rs`:
//! ```text
//! model <name> bytes <n> layers <n> classes <n> images <n>
//! sizes plan <bytes of a Plan value>
//! plan <choice> need <arena bytes> have <static arena bytes> weights <b> activations <b> scratch <b>
//! kernel <layer> <kernel name>                       (one per conv)
//! prepare ticks <SysTick ticks of the weight preparation>
//! image <i> class <k> <name> ticks <SysTick ticks of the inference>
//! logits <i> <f32 bit patterns, hex, one per class>
//! stack-phases plan <bytes> inference <bytes>       (stack high-water mark of each phase)
//! busy-pin rises <n> falls <n>                      (LED0 edges driven by the runtime)
//! stack <bytes used at the deepest point>
//! done
//! ```
//! `plan` to `logits` repeat for each kernel choice built in (`SLB_ALGOS`: `default`, `fit` (the
//! default if it fits the static arena, else the smallest prepared weights: `Plan::fit`),
//! `bitserial`, `int8dot`, `reference`). The program exits
//! with status 0, or prints `error: ...` and exits with status 1.
#![no_std]
#![no_main]

mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

use core::fmt::Write as _;
use core::ptr::addr_of_mut;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use embedded_hal::digital::OutputPin;
use heapless::{String, Vec};
use panic_semihosting as _;
use slb_cortex_m::board;
use slb_cortex_m::stack;
use slb_format::{Layer, Model};
use slb_runtime::{Engine, Plan, PlanChoice, PlanOptions};

/// The model file, embedded in flash (path from `SLB_MODEL` at build time).
static MODEL: &[u8] = include_bytes!(env!("SLB_MODEL_PATH"));
/// Test images, HWC bytes back to back (path from `SLB_IMAGES` at build time).
static IMAGES: &[u8] = include_bytes!(env!("SLB_IMAGES_PATH"));

/// Bytes of stack painted below the current frame for the high-water marks.
const STACK_PAINT: usize = 256 * 1024;

/// Most classes this program prints logits for.
const MAX_CLASSES: usize = 100;

/// The arena, aligned like the runtime's regions.
#[repr(C, align(64))]
struct Arena([u8; config::ARENA_BYTES]);
static mut ARENA: Arena = Arena([0; config::ARENA_BYTES]);

#[entry]
fn main() -> ! {
    let painted = stack::paint(STACK_PAINT);
    let code = match run(&painted) {
        Ok(()) => debug::EXIT_SUCCESS,
        Err(e) => {
            hprintln!("error: {}", e);
            debug::EXIT_FAILURE
        }
    };
    debug::exit(code);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Why the program stopped.
enum Failure {
    Format(slb_format::Error),
    Runtime(slb_runtime::Error),
    Arena { need: usize, have: usize },
    Images { len: usize, image: usize },
    Classes(usize),
    Choice(&'static str),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Format(e) => write!(f, "model file: {e}"),
            Failure::Runtime(e) => write!(f, "runtime: {e}"),
            Failure::Arena { need, have } => write!(
                f,
                "the plan needs {need} arena bytes, the static arena has {have} \
                 (rebuild with SLB_ARENA_BYTES={need})"
            ),
            Failure::Images { len, image } => write!(
                f,
                "{len} bytes of images is not a whole number of {image}-byte images"
            ),
            Failure::Classes(n) => {
                write!(f, "{n} outputs; this program prints at most {MAX_CLASSES}")
            }
            Failure::Choice(c) => write!(f, "unknown kernel choice {c}"),
        }
    }
}

fn run(painted: &stack::Painted) -> Result<(), Failure> {
    let cp = cortex_m::Peripherals::take().ok_or(Failure::Choice("peripherals taken twice"))?;
    let ticks = board::Ticks::start(cp.SYST);
    let mut led = board::CountingPin::new(board::Led0::new());

    let model = Model::parse(MODEL).map_err(Failure::Format)?;
    let s = model.input.shape;
    let image_len = (s.c * s.h * s.w) as usize;
    if image_len == 0 || IMAGES.len() % image_len != 0 {
        return Err(Failure::Images {
            len: IMAGES.len(),
            image: image_len,
        });
    }
    let images = IMAGES.len() / image_len;
    let classes = model.input.num_classes();
    hprintln!(
        "model {} bytes {} layers {} classes {} images {}",
        model.name,
        MODEL.len(),
        model.layers.len(),
        classes,
        images
    );
    hprintln!("sizes plan {}", core::mem::size_of::<Plan>());
    // One logit per element of the output tensor (a model may name no classes, e.g. a single
    // synthetic conv).
    let outputs = outputs(&model);
    if outputs > MAX_CLASSES {
        return Err(Failure::Classes(outputs));
    }
    let mut logits: Vec<f32, MAX_CLASSES> = Vec::new();
    logits
        .resize(outputs, 0.0)
        .map_err(|_| Failure::Classes(outputs))?;
    // SAFETY: `run` is called once, so this is the only reference to the arena.
    let arena: &mut [u8] = unsafe { &mut (*addr_of_mut!(ARENA)).0 };

    // Stack high-water marks: since start (parsing), and per phase (planning, inference), each
    // phase repainting the stack first; the overall peak is the largest of them.
    let mut peak = painted.peak();
    for &choice in config::ALGOS {
        let phases = run_choice(
            choice,
            &model,
            arena,
            image_len,
            &mut logits,
            &mut led,
            &ticks,
        )?;
        for p in phases {
            peak = match (peak, p) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
    }
    hprintln!("busy-pin rises {} falls {}", led.rises, led.falls);
    match peak {
        Some(b) => hprintln!("stack {}", b),
        None => hprintln!("stack overflowed-paint"),
    }
    hprintln!("done");
    Ok(())
}

/// Plans the model with kernel choice `choice`, prepares it and classifies every image,
/// printing the records of `plan` to `stack-phases`; returns the stack peaks of the planning
/// and of the inference (`None` where the paint overflowed). Never inlined, so that its
/// frame (the plan) is not added to `run`'s.
#[inline(never)]
fn run_choice(
    choice: &'static str,
    model: &Model<'_>,
    arena: &mut [u8],
    image_len: usize,
    logits: &mut [f32],
    led: &mut board::CountingPin<board::Led0>,
    ticks: &board::Ticks,
) -> Result<[Option<usize>; 2], Failure> {
    let planning = stack::paint(STACK_PAINT);
    // `fit` is what a board with a fixed arena does: the default kernels if their plan
    // fits the static arena, else the kernels with the smallest prepared weights.
    let plan_choice = PlanChoice::from_name(choice).ok_or(Failure::Choice(choice))?;
    let plan = Plan::with_choice(
        model,
        Engine::Packed,
        plan_choice,
        PlanOptions::default(),
        arena.len(),
    )
    .map_err(Failure::Runtime)?;
    let need = plan.arena_bytes();
    hprintln!(
        "plan {} need {} have {} weights {} activations {} scratch {}",
        choice,
        need,
        arena.len(),
        plan.weights_bytes(),
        plan.activation_peak_bytes(),
        plan.scratch_bytes()
    );
    if need > arena.len() {
        return Err(Failure::Arena {
            need,
            have: arena.len(),
        });
    }
    for (i, layer) in model.layers.iter().enumerate() {
        if let (Layer::Conv(_), Some(k)) = (layer, plan.kernel(i)) {
            hprintln!("kernel {} {}", i, k);
        }
    }
    let plan_peak = planning.peak();
    let inference = stack::paint(STACK_PAINT);
    let t0 = ticks.now();
    slb_runtime::prepare(model, &plan, arena).map_err(Failure::Runtime)?;
    hprintln!("prepare ticks {}", ticks.now() - t0);

    for (i, image) in IMAGES.chunks_exact(image_len).enumerate() {
        let t0 = ticks.now();
        slb_runtime::run_with_busy_pin(model, &plan, arena, image, logits, led)
            .map_err(Failure::Runtime)?;
        let dt = ticks.now() - t0;
        if led.is_high() || led.rises != led.falls {
            // The runtime lowers the busy pin when it returns; say so if it did not.
            let _ = led.set_low();
            hprintln!("warning: busy pin left high");
        }
        let best = argmax(logits);
        let name = model.input.class_names().nth(best).unwrap_or("?");
        hprintln!("image {} class {} {} ticks {}", i, best, name, dt);
        print_logits(i, logits);
    }
    let run_peak = inference.peak();
    hprintln!(
        "stack-phases plan {} inference {}",
        plan_peak.unwrap_or(usize::MAX),
        run_peak.unwrap_or(usize::MAX)
    );
    Ok([plan_peak, run_peak])
}

/// Elements of the model's output tensor (0 if the model names none). Never inlined: inlined
/// into `run`, it changed LLVM's inlining there and raised the stack peak from 75 KB to 128 KB.
#[inline(never)]
fn outputs(model: &Model<'_>) -> usize {
    model
        .tensor(model.output)
        .and_then(|t| t.shape.elements())
        .unwrap_or(0) as usize
}

/// Index of the largest logit (the first one on ties).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Prints `logits <i>` and each logit's bit pattern in hex, in one semihosting call.
fn print_logits(i: usize, logits: &[f32]) {
    // "logits " + index + 9 bytes a logit fits MAX_CLASSES logits.
    let mut line: String<{ 16 + 9 * MAX_CLASSES }> = String::new();
    let _ = write!(line, "logits {}", i);
    for &x in logits {
        let _ = write!(line, " {:08x}", x.to_bits());
    }
    hprintln!("{}", line);
}
