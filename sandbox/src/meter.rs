//! Fuel metering by rewriting the module: the same fuel on every engine.
//!
//! Fallow used wasmtime's own fuel (`Config::consume_fuel`) and epoch checks for the
//! wall clock and pacing: two checks at every loop head, and a count only wasmtime can
//! reproduce. A browser's engine has neither. So the module itself is rewritten to count
//! its fuel, by rules written here, and any engine that runs the rewritten bytes counts
//! the same: the browser volunteer page runs exactly these bytes, and one interruption
//! mechanism (the slice call below) serves the fuel limit, the wall-clock watchdog and the
//! pacer.
//!
//! # The rewritten module
//! - imports one more function, [`MODULE`]`::`[`SLICE`] `(i64) -> i64`, after the module's
//!   own function imports (so every defined function's index moves up by one);
//! - defines one more global, `(mut i64)` initialised to 0, exported as [`FUEL_EXPORT`]:
//!   the fuel counter between calls;
//! - keeps everything else, except the `.debug_*` custom sections (their code offsets
//!   would be wrong).
//!
//! # The rules (version [`VERSION`])
//! - Every function body is cut into **segments** at these instructions, which end the
//!   segment they are in: `loop`, `if`, `else`, `end`, `br`, `br_table`, `return`,
//!   `unreachable`, and every call. A segment's **cost** is the number of instructions in
//!   it, where `block`, `loop`, `end`, `else` and `nop` count 0; its cost is subtracted
//!   from the counter when the segment starts. A `br_if` does not end its segment (since
//!   version 2): what follows it is paid with what comes before, whether it branches or
//!   not, so that a loop whose body leaves by `br_if` pays once per iteration.
//! - `memory.fill`, `memory.copy` and `memory.init` also cost their length in bytes
//!   divided by [`BULK_BYTES_PER_FUEL`], subtracted just before they run.
//! - At each function's entry and at each loop's head, right after that segment's cost is
//!   subtracted, a counter below zero calls `slice(counter)`, and the counter becomes what
//!   it returns (or the run ends there, if the host traps).
//! - A function keeps the counter in a local of its own: it loads the global on entry,
//!   stores it back before every call and return (and before it ends), and loads it again
//!   after every call.
//!
//! So a guest that runs on is charged at least once per loop iteration and once per
//! call, whatever engine runs it, and the host decides at each check what happens: more
//! fuel, a pause, or the end of the run.
//!
//! # Call-free checks ([`Check::Limit`], wasmtime on Linux)
//! A call at every loop head is what the rewrite above costs in Cranelift: a value live
//! across a call is spilled to the stack for the whole range it lives in, so a loop whose
//! head may call `slice` keeps its loop-carried values on the stack, although the call is
//! made once in millions of iterations (BENCHMARKS.md). So where the host can hold and
//! stop a guest thread from outside (`crate::interrupt`), the checks call nothing. The
//! same rules count the same fuel; only what a check does differs:
//! - the module also defines one more memory, one 64 KiB page (not growable), exported
//!   as [`LIMIT_EXPORT`]: bytes 0..8 hold the **limit** (`i64`, little-endian), bytes
//!   8..16 the counter between calls (instead of the global, which stays, unused), bytes
//!   16..24 the **bank**: fuel not yet drawn into the counter;
//! - a check with the counter below zero **draws** from the bank: what is left in all is
//!   the counter plus the bank. Below the limit, the bank is emptied into the stored
//!   counter and the guest executes `unreachable`. Otherwise the counter takes up to
//!   [`BANK_DRAW`] of it, and both are stored. So the counter is compared with 0, in a
//!   register, at every check, and the limit is read only at a draw;
//! - a loop's draw comes after its body, where the check branches out to it and whence
//!   it branches back to the loop's head (`Rewriter::open_loop`): Cranelift lays code out
//!   in the module's order, so a draw inside the loop would cost every iteration a jump
//!   over it. A function's entry check draws in place;
//! - at the head of a loop that holds another loop, after its check, the counter is also
//!   stored, so that the host can read a running guest's progress;
//! - the host puts the whole budget in the bank, 0 in the counter and 0 in the limit
//!   before any guest code runs, so that trap is the fuel limit, at the same check and
//!   with the same fuel as [`Check::Slice`]. To stop the guest (its wall clock), another
//!   thread raises the limit to `i64::MAX`: it traps at its next draw, at most
//!   [`BANK_DRAW`] fuel later;
//! - a module's start function (which would run at instantiation, before the host can
//!   write the counter) is not started by the module: it is exported as [`START_EXPORT`]
//!   and the host calls it first.
//!
//! # The host's side ([`Meter`])
//! The counter starts at 0, so the first check asks for a slice. The host has given out
//! `issued` fuel in total; `slice(c)` means `issued - c` has been used. Over the limit,
//! the run ends (out of fuel); otherwise the host hands out the next slice, at most
//! [`SLICE_FUEL`] and at most what is left. After the run (however it ended), fuel used =
//! `issued - counter` (with call-free checks, `issued - (counter + bank)`, all of the
//! budget issued at once). The slice size decides only how often the host is asked, never
//! the fuel a run uses. A run whose last segments (after its last check) took it past the
//! limit also ran out of fuel (`Sandbox::run_resumable`): no run uses more than its limit.

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, ConstExpr, EntityType, ExportKind, ExportSection, Function, GlobalSection,
    GlobalType, ImportSection, Instruction, Module, TypeSection, ValType,
};
use wasmparser::{Operator, Parser, Payload, TypeRef};

use crate::Error;

/// The import module of the slice call.
pub const MODULE: &str = "fallow_meter";
/// The slice call's name: `(param i64) (result i64)`.
pub const SLICE: &str = "slice";
/// With [`Check::Limit`], the name under which the rewritten module exports the memory
/// holding its limit and counter.
pub const LIMIT_EXPORT: &str = "fallow_meter_limit";
/// With [`Check::Limit`], the name under which the rewritten module exports its start
/// function, if it has one.
pub const START_EXPORT: &str = "fallow_meter_start";
/// With [`Check::Limit`], where the counter is kept in the limit's memory.
pub const COUNTER_OFFSET: usize = 8;
/// With [`Check::Limit`], where the bank is kept in the limit's memory: the fuel not yet
/// drawn into the counter.
pub const BANK_OFFSET: usize = 16;
/// With [`Check::Limit`], the most fuel the counter draws from the bank at once: how
/// often, at the most, a running guest looks at its limit (about a millisecond of guest
/// time), and so how soon it stops once the host raises it.
pub const BANK_DRAW: u64 = 1 << 20;
/// The name under which the rewritten module exports its fuel counter.
pub const FUEL_EXPORT: &str = "fallow_meter_fuel";
/// The version of the rules above. Fuel is part of what a quorum agrees on, so every
/// worker of a unit must meter by the same version; a change of the rules is a new one.
pub const VERSION: u32 = 2;
/// The version of the code the rewrite emits around the rules (how a check is written,
/// not what it counts): 2 since wasmtime's checks call nothing ([`Check::Limit`]), 3
/// since they draw from a bank after the loop's body.
/// Compiled code from another version is other code with the same fuel, so the disk cache
/// keys on it too.
pub const CODE_VERSION: u32 = 3;
/// Bytes of `memory.fill`/`copy`/`init` per unit of fuel.
pub const BULK_BYTES_PER_FUEL: u32 = 16;
/// The most fuel the host hands out at once: how often, at the most, a guest reaches the
/// host's checks (about every few milliseconds of guest time).
pub const SLICE_FUEL: u64 = 1 << 22;

/// What the host keeps of one execution's fuel (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    /// Fuel this execution may use.
    budget: u64,
    /// Fuel handed to the counter so far.
    issued: u64,
    /// The most handed out at once.
    slice: u64,
}

/// What [`Meter::slice`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// Go on with this counter.
    Refill(i64),
    /// The budget is spent.
    Exhausted,
}

impl Meter {
    /// A meter for an execution that may use `budget` fuel.
    pub fn new(budget: u64) -> Self {
        Meter::with_slice(budget, SLICE_FUEL)
    }

    /// A meter handing out at most `slice` fuel at once (tests show the fuel used does
    /// not depend on it). `slice` is at least 1 and at most [`SLICE_FUEL`].
    pub fn with_slice(budget: u64, slice: u64) -> Self {
        Meter {
            budget,
            issued: 0,
            slice: slice.clamp(1, SLICE_FUEL),
        }
    }

    /// Fuel used when the counter reads `counter`. A counter can only be above what was
    /// issued if the guest's counter was tampered with, which rewritten code cannot do;
    /// saturating keeps that from underflowing anyway.
    pub fn used(&self, counter: i64) -> u64 {
        (i128::from(self.issued) - i128::from(counter)).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// A meter that hands out the whole budget at once ([`Check::Limit`]): the bank
    /// starts at [`Meter::issued`], and fuel used is `issued - (counter + bank)`.
    pub fn upfront(budget: u64) -> Self {
        Meter {
            budget,
            issued: budget.min(i64::MAX as u64),
            slice: SLICE_FUEL,
        }
    }

    /// Fuel handed to the counter so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// The guest's counter went below zero at a check.
    pub fn slice(&mut self, counter: i64) -> Slice {
        let used = self.used(counter);
        if used > self.budget {
            return Slice::Exhausted;
        }
        let next = self.slice.min(self.budget - used);
        self.issued = used + next;
        // `next` <= SLICE_FUEL = 2^22, so it fits.
        Slice::Refill(next as i64)
    }
}

/// What the first pass learns about the module.
#[derive(Default)]
struct Layout {
    /// Function imports (the slice import's index).
    imported_functions: u32,
    /// Globals, imported and defined (the fuel global's index).
    globals: u32,
    /// Types (the slice type's index).
    types: u32,
    /// Per type: parameter count and results (types that are not functions: none).
    signatures: Vec<Option<(u32, Vec<ValType>)>>,
    /// Per defined function: its type index.
    functions: Vec<u32>,
    /// Per memory: whether it is 64-bit.
    memory64: Vec<bool>,
    /// The start function, if the module has one.
    start: Option<u32>,
}

/// Rewrites `bytes` (a module that wasmtime validated) to meter its own fuel by the rules
/// of the module doc.
pub fn instrument(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    instrument_as(bytes, Check::Slice)
}

/// What a check point does when the counter is below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Calls `slice`: the rules of the module doc. What a browser runs, and wasmtime
    /// where [`Check::Limit`] is not supported.
    Slice,
    /// Calls nothing: below zero, the counter draws from a bank in the rewrite's own
    /// memory, and the guest traps where what is left is below the limit there (module
    /// doc, "Call-free checks").
    Limit,
    /// Benchmarks only: sets the counter to 2^62 instead of calling the host, so that the
    /// rewrite's counting is measured without its one call (no limit, no wall clock, no
    /// pacing). The call is most of the rewrite's cost: Cranelift keeps a loop's values in
    /// registers only when the loop calls nothing (BENCHMARKS.md).
    Refill,
}

/// [`instrument`] with the given [`Check`].
pub fn instrument_as(bytes: &[u8], check: Check) -> Result<Vec<u8>, Error> {
    let layout = scan(bytes)?;
    Rewriter::new(layout, check).run(bytes)
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot meter the module: {e}"))
}

fn scan(bytes: &[u8]) -> Result<Layout, Error> {
    let mut layout = Layout::default();
    let mut rt = RoundtripReencoder;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.map_err(invalid)?.into_types() {
                        layout.types += 1;
                        let signature = match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                let results = f
                                    .results()
                                    .iter()
                                    .map(|&t| rt.val_type(t).map_err(invalid))
                                    .collect::<Result<Vec<_>, _>>()?;
                                Some((f.params().len() as u32, results))
                            }
                            _ => None,
                        };
                        layout.signatures.push(signature);
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    if import.module == MODULE {
                        return Err(Error::ForbiddenImport {
                            module: import.module.into(),
                            name: import.name.into(),
                        });
                    }
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => layout.imported_functions += 1,
                        TypeRef::Global(_) => layout.globals += 1,
                        TypeRef::Memory(m) => layout.memory64.push(m.memory64),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    layout.functions.push(ty.map_err(invalid)?);
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    layout.memory64.push(m.map_err(invalid)?.memory64);
                }
            }
            Payload::GlobalSection(reader) => layout.globals += reader.count(),
            Payload::StartSection { func, .. } => layout.start = Some(func),
            Payload::ExportSection(reader) => {
                for export in reader {
                    let name = export.map_err(invalid)?.name;
                    if [FUEL_EXPORT, LIMIT_EXPORT, START_EXPORT].contains(&name) {
                        return Err(Error::Invalid(format!(
                            "the module exports `{name}`, a name Fallow's fuel metering reserves"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(layout)
}

/// The sections the rewrite adds to, in module order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Added {
    Type,
    Import,
    Memory,
    Global,
    Export,
}

/// Where a section id stands in module order (custom sections: anywhere, `None`).
fn order(id: u8) -> Option<u8> {
    // type, import, function, table, memory, tag, global, export, start, element,
    // data count, code, data.
    const ORDER: [u8; 13] = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];
    ORDER.iter().position(|&x| x == id).map(|p| p as u8)
}

fn added_order(a: Added) -> u8 {
    match a {
        Added::Type => 0,
        Added::Import => 1,
        Added::Memory => 4,
        Added::Global => 6,
        Added::Export => 7,
    }
}

struct Rewriter {
    layout: Layout,
    check: Check,
    /// Index of the slice function type.
    slice_type: u32,
    /// `[] -> results` block types for multi-value functions, by their results.
    block_types: HashMap<Vec<ValType>, u32>,
    /// Sections added or augmented so far.
    done: Vec<Added>,
    out: Module,
    /// Function bodies so far (the code section is written after the last).
    code: wasm_encoder::CodeSection,
}

/// The module's own reencoding with defined functions moved up by one.
struct Shift {
    imported_functions: u32,
}

impl Shift {
    fn function_index_of(&self, func: u32) -> u32 {
        if func < self.imported_functions {
            func
        } else {
            func + 1
        }
    }
}

impl Reencode for Shift {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, wasm_encoder::reencode::Error> {
        Ok(self.function_index_of(func))
    }
}

impl Rewriter {
    fn new(layout: Layout, check: Check) -> Self {
        let slice_type = layout.types;
        let mut block_types = HashMap::new();
        let mut next = slice_type + 1;
        for &ty in &layout.functions {
            if let Some(Some((_, results))) = layout.signatures.get(ty as usize)
                && results.len() > 1
                && !block_types.contains_key(results)
            {
                block_types.insert(results.clone(), next);
                next += 1;
            }
        }
        Rewriter {
            layout,
            check,
            slice_type,
            block_types,
            done: Vec::new(),
            out: Module::new(),
            code: wasm_encoder::CodeSection::new(),
        }
    }

    fn shift(&self) -> Shift {
        Shift {
            imported_functions: self.layout.imported_functions,
        }
    }

    fn fuel_global(&self) -> u32 {
        self.layout.globals
    }

    fn slice_function(&self) -> u32 {
        self.layout.imported_functions
    }

    /// Adds the sections of ours that come before a section at `position`, where the
    /// module has none of its own.
    fn fill_before(&mut self, position: u8) {
        for a in [
            Added::Type,
            Added::Import,
            Added::Memory,
            Added::Global,
            Added::Export,
        ] {
            if added_order(a) < position && !self.done.contains(&a) {
                self.add_empty(a);
            }
        }
    }

    fn add_empty(&mut self, a: Added) {
        match a {
            Added::Type => {
                let mut s = TypeSection::new();
                self.add_types(&mut s);
                self.out.section(&s);
            }
            Added::Import => {
                let mut s = ImportSection::new();
                self.add_import(&mut s);
                self.out.section(&s);
            }
            Added::Memory => {
                let mut s = wasm_encoder::MemorySection::new();
                self.add_memory(&mut s);
                self.out.section(&s);
            }
            Added::Global => {
                let mut s = GlobalSection::new();
                self.add_global(&mut s);
                self.out.section(&s);
            }
            Added::Export => {
                let mut s = ExportSection::new();
                self.add_export(&mut s);
                self.out.section(&s);
            }
        }
        self.done.push(a);
    }

    fn add_types(&self, s: &mut TypeSection) {
        s.ty().function([ValType::I64], [ValType::I64]);
        let mut multi: Vec<_> = self.block_types.iter().collect();
        multi.sort_by_key(|&(_, &i)| i);
        for (results, _) in multi {
            s.ty().function([], results.iter().copied());
        }
    }

    fn add_import(&self, s: &mut ImportSection) {
        s.import(MODULE, SLICE, EntityType::Function(self.slice_type));
    }

    fn add_global(&self, s: &mut GlobalSection) {
        s.global(
            GlobalType {
                val_type: ValType::I64,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i64_const(0),
        );
    }

    fn add_export(&self, s: &mut ExportSection) {
        s.export(FUEL_EXPORT, ExportKind::Global, self.fuel_global());
        if self.check == Check::Limit {
            s.export(LIMIT_EXPORT, ExportKind::Memory, self.limit_memory());
            if let Some(start) = self.layout.start {
                s.export(
                    START_EXPORT,
                    ExportKind::Func,
                    self.shift().function_index_of(start),
                );
            }
        }
    }

    /// With [`Check::Limit`], the limit's own memory: one page, after the module's.
    fn add_memory(&self, s: &mut wasm_encoder::MemorySection) {
        if self.check == Check::Limit {
            s.memory(wasm_encoder::MemoryType {
                minimum: 1,
                maximum: Some(1),
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
    }

    fn limit_memory(&self) -> u32 {
        self.layout.memory64.len() as u32
    }

    /// An access to the limit's memory at `offset`.
    fn limit_arg(&self, offset: usize) -> wasm_encoder::MemArg {
        wasm_encoder::MemArg {
            offset: offset as u64,
            align: 3,
            memory_index: self.limit_memory(),
        }
    }

    /// Pushes the counter as stored between calls.
    fn load_stored(&self, f: &mut Function) {
        if self.check == Check::Limit {
            f.instruction(&Instruction::I32Const(0));
            f.instruction(&Instruction::I64Load(self.limit_arg(COUNTER_OFFSET)));
        } else {
            f.instruction(&Instruction::GlobalGet(self.fuel_global()));
        }
    }

    fn run(mut self, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let mut shift = self.shift();
        let mut defined = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(invalid)?;
            if let Some((id, _)) = payload.as_section()
                && let Some(position) = order(id)
            {
                self.fill_before(position);
            }
            match payload {
                Payload::Version { .. } | Payload::End(_) => {}
                Payload::TypeSection(reader) => {
                    let mut s = TypeSection::new();
                    shift.parse_type_section(&mut s, reader).map_err(invalid)?;
                    self.add_types(&mut s);
                    self.out.section(&s);
                    self.done.push(Added::Type);
                }
                Payload::ImportSection(reader) => {
                    let mut s = ImportSection::new();
                    shift
                        .parse_import_section(&mut s, reader)
                        .map_err(invalid)?;
                    self.add_import(&mut s);
                    self.out.section(&s);
                    self.done.push(Added::Import);
                }
                Payload::GlobalSection(reader) => {
                    let mut s = GlobalSection::new();
                    shift
                        .parse_global_section(&mut s, reader)
                        .map_err(invalid)?;
                    self.add_global(&mut s);
                    self.out.section(&s);
                    self.done.push(Added::Global);
                }
                Payload::ExportSection(reader) => {
                    let mut s = ExportSection::new();
                    shift
                        .parse_export_section(&mut s, reader)
                        .map_err(invalid)?;
                    self.add_export(&mut s);
                    self.out.section(&s);
                    self.done.push(Added::Export);
                }
                Payload::FunctionSection(reader) => {
                    let mut s = wasm_encoder::FunctionSection::new();
                    shift
                        .parse_function_section(&mut s, reader)
                        .map_err(invalid)?;
                    self.out.section(&s);
                }
                Payload::TableSection(reader) => {
                    let mut s = wasm_encoder::TableSection::new();
                    shift.parse_table_section(&mut s, reader).map_err(invalid)?;
                    self.out.section(&s);
                }
                Payload::MemorySection(reader) => {
                    let mut s = wasm_encoder::MemorySection::new();
                    shift
                        .parse_memory_section(&mut s, reader)
                        .map_err(invalid)?;
                    self.add_memory(&mut s);
                    self.out.section(&s);
                    self.done.push(Added::Memory);
                }
                Payload::TagSection(reader) => {
                    let mut s = wasm_encoder::TagSection::new();
                    shift.parse_tag_section(&mut s, reader).map_err(invalid)?;
                    self.out.section(&s);
                }
                Payload::StartSection { func, .. } => {
                    // Call-free checks: exported instead (`add_export`).
                    if self.check != Check::Limit {
                        let function_index = shift.start_section(func).map_err(invalid)?;
                        self.out
                            .section(&wasm_encoder::StartSection { function_index });
                    }
                }
                Payload::ElementSection(reader) => {
                    let mut s = wasm_encoder::ElementSection::new();
                    shift
                        .parse_element_section(&mut s, reader)
                        .map_err(invalid)?;
                    self.out.section(&s);
                }
                Payload::DataCountSection { count, .. } => {
                    self.out.section(&wasm_encoder::DataCountSection { count });
                }
                Payload::DataSection(reader) => {
                    let mut s = wasm_encoder::DataSection::new();
                    shift.parse_data_section(&mut s, reader).map_err(invalid)?;
                    self.out.section(&s);
                }
                Payload::CodeSectionStart { .. } => {}
                Payload::CodeSectionEntry(body) => {
                    let ty = *self
                        .layout
                        .functions
                        .get(defined)
                        .ok_or_else(|| invalid("more function bodies than functions"))?;
                    defined += 1;
                    let function = self.function(&mut shift, ty, &body)?;
                    self.code.function(&function);
                    if defined == self.layout.functions.len() {
                        let code = std::mem::take(&mut self.code);
                        self.out.section(&code);
                    }
                }
                Payload::CustomSection(reader) => {
                    if reader.name().starts_with(".debug_") {
                        continue;
                    }
                    if let wasmparser::KnownCustom::Name(names) = reader.as_known() {
                        let names = shift.custom_name_section(names).map_err(invalid)?;
                        self.out.section(&names);
                    } else {
                        let custom = shift.custom_section(reader).map_err(invalid)?;
                        self.out.section(&custom);
                    }
                }
                other => {
                    return Err(invalid(format!(
                        "unexpected section {:?}",
                        other.as_section().map(|(id, _)| id)
                    )));
                }
            }
        }
        self.fill_before(u8::MAX);
        Ok(self.out.finish())
    }
}

/// Whether `op` ends the segment it is in (module doc).
fn ends_segment(op: &Operator) -> bool {
    use Operator as O;
    matches!(
        op,
        O::Loop { .. }
            | O::If { .. }
            | O::Else
            | O::End
            | O::Br { .. }
            | O::BrTable { .. }
            | O::Return
            | O::Unreachable
    ) || is_call(op)
}

fn is_call(op: &Operator) -> bool {
    use Operator as O;
    matches!(
        op,
        O::Call { .. }
            | O::CallIndirect { .. }
            | O::CallRef { .. }
            | O::ReturnCall { .. }
            | O::ReturnCallIndirect { .. }
            | O::ReturnCallRef { .. }
    )
}

/// A branch's relative depth in the rewritten body, where `frames` are the blocks, loops
/// and ifs open around it (innermost last): a loop of [`Rewriter::open_loop`] is three
/// labels, its body inside the innermost, so a branch to it crosses one more label and a
/// branch past it two more.
fn renumber(frames: &[Option<u64>], depth: u32) -> u32 {
    let target = frames.len().checked_sub(depth as usize + 1);
    let mut extra = 0;
    for (j, frame) in frames.iter().enumerate().rev() {
        if target.is_some_and(|t| j < t) {
            break;
        }
        if frame.is_some() {
            extra += if Some(j) == target { 1 } else { 2 };
        }
    }
    depth + extra
}

/// An instruction's own cost (module doc).
fn cost(op: &Operator) -> u64 {
    use Operator as O;
    match op {
        O::Block { .. } | O::Loop { .. } | O::End | O::Else | O::Nop => 0,
        _ => 1,
    }
}

/// Instructions the rules do not cover: control flow the engine's features leave out
/// (exceptions, typed-reference branches, stack switching). Metering them wrongly could
/// let a guest run unmetered, so a module with them is refused.
fn unsupported(op: &Operator) -> bool {
    use Operator as O;
    matches!(
        op,
        O::Try { .. }
            | O::Catch { .. }
            | O::CatchAll
            | O::Delegate { .. }
            | O::Rethrow { .. }
            | O::Throw { .. }
            | O::ThrowRef
            | O::TryTable { .. }
            | O::BrOnNull { .. }
            | O::BrOnNonNull { .. }
            | O::BrOnCast { .. }
            | O::BrOnCastFail { .. }
    )
}

/// The locals a rewritten function adds after its own.
struct Locals {
    /// The counter.
    fuel: u32,
    /// Scratch for a 32-bit bulk length.
    len32: u32,
    /// Scratch for a 64-bit bulk length.
    len64: u32,
}

impl Rewriter {
    fn function(
        &self,
        shift: &mut Shift,
        ty: u32,
        body: &wasmparser::FunctionBody<'_>,
    ) -> Result<Function, Error> {
        let Some(Some((params, results))) = self.layout.signatures.get(ty as usize) else {
            return Err(invalid(format!("function type {ty} is not a function")));
        };
        let mut declared = Vec::new();
        let mut count = *params;
        for local in body.get_locals_reader().map_err(invalid)? {
            let (n, t) = local.map_err(invalid)?;
            count = count
                .checked_add(n)
                .ok_or_else(|| invalid("too many locals"))?;
            declared.push((n, shift.val_type(t).map_err(invalid)?));
        }
        let locals = Locals {
            fuel: count,
            len32: count + 1,
            len64: count + 2,
        };
        declared.extend([(1, ValType::I64), (1, ValType::I32), (1, ValType::I64)]);

        let mut ops = Vec::new();
        let mut reader = body.get_operators_reader().map_err(invalid)?;
        while !reader.eof() {
            let op = reader.read().map_err(invalid)?;
            if unsupported(&op) {
                return Err(invalid(format!(
                    "instruction {op:?} is not supported by Fallow's fuel metering"
                )));
            }
            ops.push(op);
        }
        reader.finish().map_err(invalid)?;
        // Pass 1: each segment's cost, in order, and (call-free checks) the loops that
        // hold another loop, by position.
        let mut costs = Vec::new();
        let mut current = 0u64;
        let mut open: Vec<Option<usize>> = Vec::new();
        let mut outer = std::collections::HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            current += cost(op);
            if ends_segment(op) {
                costs.push(current);
                current = 0;
            }
            match op {
                Operator::Loop { .. } => {
                    if let Some(&Some(at)) = open.iter().rev().find(|o| o.is_some()) {
                        outer.insert(at);
                    }
                    open.push(Some(i));
                }
                Operator::Block { .. } | Operator::If { .. } => open.push(None),
                Operator::End => {
                    open.pop();
                }
                _ => {}
            }
        }
        let Some((last, ops)) = ops.split_last() else {
            return Err(invalid("empty function body"));
        };
        if !matches!(last, Operator::End) {
            return Err(invalid("function body does not end with `end`"));
        }
        let block = match results.as_slice() {
            [] => BlockType::Empty,
            [one] => BlockType::Result(*one),
            many => BlockType::FunctionType(self.block_types[many]),
        };

        // Pass 2: the rewritten body.
        let mut f = Function::new(declared);
        let mut costs = costs.into_iter();
        self.load_stored(&mut f);
        f.instruction(&Instruction::LocalSet(locals.fuel));
        self.charge(&mut f, &locals, costs.next().unwrap_or(0), true);
        // Branches to the function's own label land at this block's end, where the
        // counter is stored back.
        f.instruction(&Instruction::Block(block));
        // The open blocks, loops and ifs, innermost last: for each, the cost charged at
        // its head if it is a loop whose check branches out to its draw from the bank
        // ([`Check::Limit`]: `Rewriter::open_loop`), so that branches crossing it are
        // renumbered.
        let mut frames: Vec<Option<u64>> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if is_call(op) || matches!(op, Operator::Return) {
                self.store(&mut f, &locals);
            }
            self.bulk_charge(&mut f, &locals, op);
            let call = is_call(op);
            let ends = ends_segment(op);
            match op {
                Operator::Loop { blockty } if self.check == Check::Limit => {
                    let cost = costs.next().unwrap_or(0);
                    let drawn = self.open_loop(&mut f, shift, &locals, *blockty, cost)?;
                    frames.push(drawn.then_some(cost));
                }
                Operator::Loop { .. } | Operator::Block { .. } | Operator::If { .. } => {
                    frames.push(None);
                    f.instruction(&shift.instruction(op.clone()).map_err(invalid)?);
                }
                Operator::End => match frames.pop() {
                    Some(Some(cost)) => self.close_loop(&mut f, &locals, cost),
                    _ => {
                        f.instruction(&Instruction::End);
                    }
                },
                Operator::Br { relative_depth } => {
                    f.instruction(&Instruction::Br(renumber(&frames, *relative_depth)));
                }
                Operator::BrIf { relative_depth } => {
                    f.instruction(&Instruction::BrIf(renumber(&frames, *relative_depth)));
                }
                Operator::BrTable { targets } => {
                    let depths = targets
                        .targets()
                        .map(|t| t.map(|d| renumber(&frames, d)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(invalid)?;
                    f.instruction(&Instruction::BrTable(
                        depths.into(),
                        renumber(&frames, targets.default()),
                    ));
                }
                _ => {
                    f.instruction(&shift.instruction(op.clone()).map_err(invalid)?);
                }
            }
            if call {
                self.load_stored(&mut f);
                f.instruction(&Instruction::LocalSet(locals.fuel));
            }
            let checked_loop = self.check == Check::Limit && matches!(op, Operator::Loop { .. });
            if ends && !checked_loop {
                let is_loop = matches!(op, Operator::Loop { .. });
                self.charge(&mut f, &locals, costs.next().unwrap_or(0), is_loop);
            }
            // Call-free checks: the counter between calls is also where the companion reads
            // a running guest's progress, so an outer loop stores it at every iteration (one
            // store, where an inner loop's iterations are many).
            if self.check == Check::Limit && outer.contains(&i) {
                self.store(&mut f, &locals);
            }
        }
        f.instruction(&Instruction::End);
        self.store(&mut f, &locals);
        f.instruction(&Instruction::End);
        Ok(f)
    }

    /// [`Check::Limit`]: a loop whose check, below zero, branches out to its draw from
    /// the bank, which comes after the loop's body (`close_loop`): Cranelift lays out
    /// code in the module's order, so the draw stays out of the loop's way. The loop
    /// `loop bt … end` becomes
    ///
    /// ```text
    /// block bt              ;; the loop's results, where its body falls out
    ///   loop bt             ;; the loop's own label
    ///     block             ;; the check's way out
    ///       (charge cost) (counter < 0) br_if 0
    ///       …body…          ;; branches renumbered (`renumber`)
    ///       br 2
    ///     end
    ///     (draw from the bank, or trap) (counter += cost) br 0
    ///   end
    /// end
    /// ```
    ///
    /// The draw gives back the head's cost, which the loop's head charges again: the same
    /// fuel as the check in place. A loop with parameters keeps the check in place
    /// (`false`): its parameters are on the stack at the head, where the block could
    /// not take them.
    fn open_loop(
        &self,
        f: &mut Function,
        shift: &mut Shift,
        locals: &Locals,
        blockty: wasmparser::BlockType,
        cost: u64,
    ) -> Result<bool, Error> {
        let ty = shift.block_type(blockty).map_err(invalid)?;
        let params = match blockty {
            wasmparser::BlockType::FuncType(t) => self
                .layout
                .signatures
                .get(t as usize)
                .and_then(|s| s.as_ref())
                .map_or(0, |(params, _)| *params),
            _ => 0,
        };
        if params > 0 {
            f.instruction(&Instruction::Loop(ty));
            self.charge(f, locals, cost, true);
            return Ok(false);
        }
        f.instruction(&Instruction::Block(ty));
        f.instruction(&Instruction::Loop(ty));
        f.instruction(&Instruction::Block(BlockType::Empty));
        f.instruction(&Instruction::LocalGet(locals.fuel));
        if cost != 0 {
            f.instruction(&Instruction::I64Const(cost as i64));
            f.instruction(&Instruction::I64Sub);
        }
        f.instruction(&Instruction::LocalTee(locals.fuel));
        f.instruction(&Instruction::I64Const(0));
        f.instruction(&Instruction::I64LtS);
        f.instruction(&Instruction::BrIf(0));
        Ok(true)
    }

    /// The end of a loop that [`Rewriter::open_loop`] opened with its check branching out.
    fn close_loop(&self, f: &mut Function, locals: &Locals, cost: u64) {
        f.instruction(&Instruction::Br(2));
        f.instruction(&Instruction::End);
        self.draw_from_bank(f, locals);
        if cost != 0 {
            f.instruction(&Instruction::LocalGet(locals.fuel));
            f.instruction(&Instruction::I64Const(cost as i64));
            f.instruction(&Instruction::I64Add);
            f.instruction(&Instruction::LocalSet(locals.fuel));
        }
        f.instruction(&Instruction::Br(0));
        f.instruction(&Instruction::End);
        f.instruction(&Instruction::End);
    }

    /// Subtracts `cost` from the counter, then, at a check point, asks for a slice when
    /// the counter is below zero.
    fn charge(&self, f: &mut Function, locals: &Locals, cost: u64, check: bool) {
        if cost == 0 && !check {
            return;
        }
        f.instruction(&Instruction::LocalGet(locals.fuel));
        if cost != 0 {
            // A segment's cost is bounded by the size of the function body.
            f.instruction(&Instruction::I64Const(cost as i64));
            f.instruction(&Instruction::I64Sub);
        }
        if !check {
            f.instruction(&Instruction::LocalSet(locals.fuel));
            return;
        }
        f.instruction(&Instruction::LocalTee(locals.fuel));
        f.instruction(&Instruction::I64Const(0));
        f.instruction(&Instruction::I64LtS);
        f.instruction(&Instruction::If(BlockType::Empty));
        match self.check {
            Check::Slice => {
                f.instruction(&Instruction::LocalGet(locals.fuel));
                f.instruction(&Instruction::Call(self.slice_function()));
            }
            Check::Refill => {
                f.instruction(&Instruction::I64Const(1 << 62));
            }
            Check::Limit => {
                self.draw_from_bank(f, locals);
                f.instruction(&Instruction::End);
                return;
            }
        }
        f.instruction(&Instruction::LocalSet(locals.fuel));
        f.instruction(&Instruction::End);
    }

    /// [`Check::Limit`], the counter below zero: what is left in all is the counter plus
    /// the bank. Below the limit (out of fuel, or the limit raised to stop the guest), the
    /// bank is emptied into the stored counter and the guest traps; otherwise the counter
    /// takes up to [`BANK_DRAW`] of it, and both are stored (the host's view of the
    /// guest's progress stays whole).
    fn draw_from_bank(&self, f: &mut Function, locals: &Locals) {
        let bank = self.limit_arg(BANK_OFFSET);
        f.instruction(&Instruction::LocalGet(locals.fuel));
        f.instruction(&Instruction::I32Const(0));
        f.instruction(&Instruction::I64Load(bank));
        f.instruction(&Instruction::I64Add);
        f.instruction(&Instruction::LocalTee(locals.fuel));
        f.instruction(&Instruction::I32Const(0));
        f.instruction(&Instruction::I64Load(self.limit_arg(0)));
        f.instruction(&Instruction::I64LtS);
        f.instruction(&Instruction::If(BlockType::Empty));
        f.instruction(&Instruction::I32Const(0));
        f.instruction(&Instruction::I64Const(0));
        f.instruction(&Instruction::I64Store(bank));
        self.store(f, locals);
        f.instruction(&Instruction::Unreachable);
        f.instruction(&Instruction::End);
        // bank = max(left - BANK_DRAW, 0); counter = left - bank.
        f.instruction(&Instruction::I32Const(0));
        f.instruction(&Instruction::LocalGet(locals.fuel));
        f.instruction(&Instruction::I64Const(BANK_DRAW as i64));
        f.instruction(&Instruction::I64Sub);
        f.instruction(&Instruction::LocalTee(locals.len64));
        f.instruction(&Instruction::I64Const(0));
        f.instruction(&Instruction::LocalGet(locals.len64));
        f.instruction(&Instruction::I64Const(0));
        f.instruction(&Instruction::I64GtS);
        f.instruction(&Instruction::Select);
        f.instruction(&Instruction::LocalTee(locals.len64));
        f.instruction(&Instruction::I64Store(bank));
        f.instruction(&Instruction::LocalGet(locals.fuel));
        f.instruction(&Instruction::LocalGet(locals.len64));
        f.instruction(&Instruction::I64Sub);
        f.instruction(&Instruction::LocalSet(locals.fuel));
        self.store(f, locals);
    }

    fn store(&self, f: &mut Function, locals: &Locals) {
        if self.check == Check::Limit {
            f.instruction(&Instruction::I32Const(0));
            f.instruction(&Instruction::LocalGet(locals.fuel));
            f.instruction(&Instruction::I64Store(self.limit_arg(COUNTER_OFFSET)));
        } else {
            f.instruction(&Instruction::LocalGet(locals.fuel));
            f.instruction(&Instruction::GlobalSet(self.fuel_global()));
        }
    }

    /// The length part of a bulk memory instruction's cost: its length operand (on top of
    /// the stack) is kept in a scratch local, charged, and put back.
    fn bulk_charge(&self, f: &mut Function, locals: &Locals, op: &Operator) {
        let memory64 = match op {
            Operator::MemoryFill { mem } => self.is_memory64(*mem),
            // The length's type is the narrower of the two memories'.
            Operator::MemoryCopy { dst_mem, src_mem } => {
                self.is_memory64(*dst_mem) && self.is_memory64(*src_mem)
            }
            // memory.init's length is an i32 whatever the memory.
            Operator::MemoryInit { .. } => false,
            _ => return,
        };
        let scratch = if memory64 { locals.len64 } else { locals.len32 };
        f.instruction(&Instruction::LocalTee(scratch));
        f.instruction(&Instruction::LocalGet(locals.fuel));
        f.instruction(&Instruction::LocalGet(scratch));
        if !memory64 {
            f.instruction(&Instruction::I64ExtendI32U);
        }
        f.instruction(&Instruction::I64Const(i64::from(
            BULK_BYTES_PER_FUEL.trailing_zeros(),
        )));
        f.instruction(&Instruction::I64ShrU);
        f.instruction(&Instruction::I64Sub);
        f.instruction(&Instruction::LocalSet(locals.fuel));
    }

    fn is_memory64(&self, index: u32) -> bool {
        self.layout
            .memory64
            .get(index as usize)
            .copied()
            .unwrap_or(false)
    }
}
