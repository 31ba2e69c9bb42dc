//! NaN canonicalization by rewriting the module: the NaN bits of wasmtime's canonicalizing
//! engine on any engine.
//!
//! WebAssembly leaves the bits of a NaN that an arithmetic instruction produces partly to
//! the engine and the hardware (the sign of `0/0` is set on x86 and clear on Arm; a NaN
//! operand's payload may or may not be passed on). A project that asks for
//! `nan_canonicalization` runs, natively, on wasmtime with Cranelift's
//! `cranelift_nan_canonicalization`, which replaces every NaN such an instruction returns
//! by one canonical NaN. A browser's engine has no such option, so [`canonicalize`]
//! rewrites the module to do the same itself: any engine that runs the rewritten bytes
//! gets the bits wasmtime's canonicalizing engine gets.
//!
//! # What is rewritten
//! Exactly the instructions Cranelift's pass rewrites for wasmtime (cranelift-codegen
//! `nan_canonicalization.rs` `is_fp_arith`: `fadd fsub fmul fdiv fmin fmax sqrt ceil floor
//! trunc nearest fdemote fpromote fvdemote fvpromote_low fma`, reached from wasm through
//! wasmtime's `code_translator.rs`):
//! - scalar `f32`/`f64` `add sub mul div min max sqrt ceil floor trunc nearest`,
//!   `f32.demote_f64`, `f64.promote_f32`;
//! - vector `f32x4`/`f64x2` `add sub mul div min max sqrt ceil floor trunc nearest`,
//!   `f32x4.demote_f64x2_zero`, `f64x2.promote_low_f32x4`.
//!
//! Not rewritten, as Cranelift does not rewrite them: `neg`, `abs` and `copysign` (they
//! touch only the sign bit), `pmin`/`pmax` (they return one operand, bits and all), loads,
//! constants, reinterpretations and conversions from integers (no NaN comes from them).
//! Relaxed SIMD's float instructions are refused: their results are the hardware's (on x86
//! wasmtime does not even canonicalize `relaxed_min`/`max`), and the sandbox refuses
//! relaxed SIMD at submit anyway.
//!
//! After each of these instructions comes, with a scratch local of the result's type that
//! the rewrite adds to the function:
//! - scalar: `local.tee $t  fN.const nan  local.get $t  local.get $t  fN.eq  select` —
//!   `$t` when `$t == $t`, that is when it is not a NaN, else the canonical NaN;
//! - vector: `local.tee $t  v128.const nan×lanes  local.get $t  local.get $t  fNxM.eq
//!   v128.bitselect` — lane by lane the same.
//!
//! The canonical NaNs are Cranelift's `Ieee32::NAN` and `Ieee64::NAN`: positive, quiet, no
//! payload ([`F32_NAN`], [`F64_NAN`]). Everything else in the module is copied as it is,
//! except the `.debug_*` custom sections (their code offsets would be wrong).
//!
//! # Fuel
//! The rewrite runs after [`crate::meter::instrument`], on the metered bytes, so the
//! instructions it adds are in no segment the meter counted: a module uses the same fuel
//! with or without it, as it does on wasmtime's canonicalizing engine (sandbox test
//! `the_nan_rewrite_gives_the_canonical_engines_bits_and_fuel`).
//!
//! # Where it differs from wasmtime
//! On an x86-64 CPU without SSE4.1 (before 2008), wasmtime computes scalar and vector
//! `ceil`, `floor`, `trunc` and `nearest` by calling out of the compiled code, and
//! Cranelift's pass does not see those calls: a NaN from them keeps the input's payload
//! there, while the rewritten module gives the canonical NaN everywhere.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{Function, Ieee32, Ieee64, Instruction, ValType};
use wasmparser::{Operator, Parser, Payload};

use crate::Error;

/// The canonical `f32` NaN (Cranelift's `Ieee32::NAN`): positive, quiet, no payload.
pub const F32_NAN: u32 = 0x7fc0_0000;
/// The canonical `f64` NaN (Cranelift's `Ieee64::NAN`): positive, quiet, no payload.
pub const F64_NAN: u64 = 0x7ff8_0000_0000_0000;

/// [`F32_NAN`] in each of four lanes (lane 0 in the low bits, as `v128.const` reads them).
const F32X4_NAN: i128 = (F32_NAN as u128 * 0x0000_0001_0000_0001_0000_0001_0000_0001) as i128;
/// [`F64_NAN`] in each of two lanes.
const F64X2_NAN: i128 = (F64_NAN as u128 * ((1 << 64) | 1)) as i128;

/// Rewrites `bytes` (a valid module, normally [`crate::meter::instrument`]'s output) so
/// that every NaN an arithmetic instruction produces is the canonical one, as the module
/// doc says.
pub fn canonicalize(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = wasm_encoder::Module::new();
    // Parameter count per type index (`None`: not a function type).
    let mut params: Vec<Option<u32>> = Vec::new();
    // Type index per defined function, in code-section order.
    let mut functions: Vec<u32> = Vec::new();
    let mut code = wasm_encoder::CodeSection::new();
    let mut bodies = 0u32;
    let mut defined = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        match &payload {
            Payload::TypeSection(reader) => {
                for group in reader.clone() {
                    for sub in group.map_err(invalid)?.into_types() {
                        params.push(match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                Some(f.params().len() as u32)
                            }
                            _ => None,
                        });
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader.clone() {
                    functions.push(ty.map_err(invalid)?);
                }
            }
            Payload::CodeSectionStart { count, .. } => {
                bodies = *count;
                if bodies == 0 {
                    out.section(&code);
                }
                continue;
            }
            Payload::CodeSectionEntry(body) => {
                let ty = *functions
                    .get(defined)
                    .ok_or_else(|| invalid("more function bodies than functions"))?;
                let Some(Some(params)) = params.get(ty as usize) else {
                    return Err(invalid(format!("function type {ty} is not a function")));
                };
                defined += 1;
                code.function(&function(*params, body)?);
                if defined == bodies as usize {
                    out.section(&code);
                }
                continue;
            }
            Payload::CustomSection(reader) => {
                if !reader.name().starts_with(".debug_") {
                    out.section(&wasm_encoder::CustomSection {
                        name: reader.name().into(),
                        data: reader.data().into(),
                    });
                }
                continue;
            }
            _ => {}
        }
        // Every other section is copied byte for byte: the rewrite moves no index.
        if let Some((id, range)) = payload.as_section() {
            let data = bytes
                .get(range)
                .ok_or_else(|| invalid("section runs past the end"))?;
            out.section(&wasm_encoder::RawSection { id, data });
        }
    }
    Ok(out.finish())
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot canonicalize NaNs in the module: {e}"))
}

/// The type of the result an instruction gives that may be a NaN with engine-dependent
/// bits (module doc), or `None` for any other instruction.
fn nan_result(op: &Operator) -> Result<Option<Lanes>, Error> {
    use Operator as O;
    Ok(Some(match op {
        O::F32Add
        | O::F32Sub
        | O::F32Mul
        | O::F32Div
        | O::F32Min
        | O::F32Max
        | O::F32Sqrt
        | O::F32Ceil
        | O::F32Floor
        | O::F32Trunc
        | O::F32Nearest
        | O::F32DemoteF64 => Lanes::F32,
        O::F64Add
        | O::F64Sub
        | O::F64Mul
        | O::F64Div
        | O::F64Min
        | O::F64Max
        | O::F64Sqrt
        | O::F64Ceil
        | O::F64Floor
        | O::F64Trunc
        | O::F64Nearest
        | O::F64PromoteF32 => Lanes::F64,
        O::F32x4Add
        | O::F32x4Sub
        | O::F32x4Mul
        | O::F32x4Div
        | O::F32x4Min
        | O::F32x4Max
        | O::F32x4Sqrt
        | O::F32x4Ceil
        | O::F32x4Floor
        | O::F32x4Trunc
        | O::F32x4Nearest
        | O::F32x4DemoteF64x2Zero => Lanes::F32x4,
        O::F64x2Add
        | O::F64x2Sub
        | O::F64x2Mul
        | O::F64x2Div
        | O::F64x2Min
        | O::F64x2Max
        | O::F64x2Sqrt
        | O::F64x2Ceil
        | O::F64x2Floor
        | O::F64x2Trunc
        | O::F64x2Nearest
        | O::F64x2PromoteLowF32x4 => Lanes::F64x2,
        O::F32x4RelaxedMadd
        | O::F32x4RelaxedNmadd
        | O::F64x2RelaxedMadd
        | O::F64x2RelaxedNmadd
        | O::F32x4RelaxedMin
        | O::F32x4RelaxedMax
        | O::F64x2RelaxedMin
        | O::F64x2RelaxedMax => {
            return Err(invalid(format!(
                "{op:?} is relaxed SIMD, whose results are the hardware's"
            )));
        }
        _ => return Ok(None),
    }))
}

/// The result types [`nan_result`] names, each with the scratch local it needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lanes {
    F32,
    F64,
    F32x4,
    F64x2,
}

impl Lanes {
    const ALL: [Lanes; 4] = [Lanes::F32, Lanes::F64, Lanes::F32x4, Lanes::F64x2];

    fn index(self) -> usize {
        self as usize
    }

    fn local_type(self) -> ValType {
        match self {
            Lanes::F32 => ValType::F32,
            Lanes::F64 => ValType::F64,
            Lanes::F32x4 | Lanes::F64x2 => ValType::V128,
        }
    }

    /// The canonicalizing sequence after an instruction whose result is on the stack
    /// (module doc), with `scratch` a local of [`Lanes::local_type`].
    fn canonicalize(self, f: &mut Function, scratch: u32) {
        f.instruction(&Instruction::LocalTee(scratch));
        f.instruction(&match self {
            Lanes::F32 => Instruction::F32Const(Ieee32::new(F32_NAN)),
            Lanes::F64 => Instruction::F64Const(Ieee64::new(F64_NAN)),
            Lanes::F32x4 => Instruction::V128Const(F32X4_NAN),
            Lanes::F64x2 => Instruction::V128Const(F64X2_NAN),
        });
        f.instruction(&Instruction::LocalGet(scratch));
        f.instruction(&Instruction::LocalGet(scratch));
        match self {
            Lanes::F32 => {
                f.instruction(&Instruction::F32Eq);
                f.instruction(&Instruction::Select);
            }
            Lanes::F64 => {
                f.instruction(&Instruction::F64Eq);
                f.instruction(&Instruction::Select);
            }
            Lanes::F32x4 => {
                f.instruction(&Instruction::F32x4Eq);
                f.instruction(&Instruction::V128Bitselect);
            }
            Lanes::F64x2 => {
                f.instruction(&Instruction::F64x2Eq);
                f.instruction(&Instruction::V128Bitselect);
            }
        }
    }
}

/// One function body rewritten: its own locals, then one scratch local per result type it
/// canonicalizes (`f32`, `f64`, one `v128` shared by both vector shapes).
fn function(params: u32, body: &wasmparser::FunctionBody<'_>) -> Result<Function, Error> {
    let mut rt = RoundtripReencoder;
    let mut declared = Vec::new();
    let mut count = params;
    for local in body.get_locals_reader().map_err(invalid)? {
        let (n, t) = local.map_err(invalid)?;
        count = count
            .checked_add(n)
            .ok_or_else(|| invalid("too many locals"))?;
        declared.push((n, rt.val_type(t).map_err(invalid)?));
    }
    let mut ops = Vec::new();
    let mut used = [false; 4];
    let mut reader = body.get_operators_reader().map_err(invalid)?;
    while !reader.eof() {
        let op = reader.read().map_err(invalid)?;
        let lanes = nan_result(&op)?;
        if let Some(l) = lanes {
            used[l.index()] = true;
        }
        ops.push((op, lanes));
    }
    reader.finish().map_err(invalid)?;

    // Scratch locals in the order f32, f64, v128, only those this body needs.
    let mut scratch = [0u32; 4];
    let mut v128 = None;
    for l in Lanes::ALL {
        if !used[l.index()] {
            continue;
        }
        let ty = l.local_type();
        scratch[l.index()] = match (ty, v128) {
            (ValType::V128, Some(local)) => local,
            _ => {
                let local = count;
                count = count
                    .checked_add(1)
                    .ok_or_else(|| invalid("too many locals"))?;
                declared.push((1, ty));
                if ty == ValType::V128 {
                    v128 = Some(local);
                }
                local
            }
        };
    }

    let mut f = Function::new(declared);
    for (op, lanes) in ops {
        f.instruction(&rt.instruction(op).map_err(invalid)?);
        if let Some(l) = lanes {
            l.canonicalize(&mut f, scratch[l.index()]);
        }
    }
    Ok(f)
}
