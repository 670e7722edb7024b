//! The ONNX Runtime ABI: `RegisterCustomOps` and the ops' C callbacks (`BitLinear`, `Q8Linear`
//! and `GroupQueryAttention` share every callback but their name; the callbacks tell them apart
//! by it, and a kernel knows which op it computes).
//!
//! What this relies on (ONNX Runtime 1.32's C API, `onnxruntime_c_api.h`, and its custom-op
//! registry, `custom_ops.cc`):
//! - The library is loaded by `SessionOptions.register_custom_ops_library` (Python) or by
//!   onnxruntime-genai's `custom_ops_library` session option, which call the exported
//!   `RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*)`. The library never links
//!   ONNX Runtime: every call goes through the `OrtApi` table the runtime hands over, and that
//!   pointer is kept per kernel, never in a global, because one process may hold two copies of
//!   the runtime (Python's onnxruntime and onnxruntime-genai's), each with its own table.
//! - `OrtCustomOp.version` is the API version of the table we ask for (17, ORT 1.17); a runtime
//!   reads only the callbacks that version has. With 16 or more it calls `CreateKernelV2` and
//!   `KernelComputeV2`, which return a status, so an error reaches the caller as an ONNX
//!   Runtime error. From version 8 it calls the input/output characteristic callbacks, from 13
//!   `GetInputMemoryType`, from 17 `GetStartVersion` and `GetEndVersion` when present.
//! - Threads come from the session's intra-op pool through `KernelContext_ParallelFor`.
//! - Custom ops get no prepacking: `W` is read in place, in the layout `build` wrote.
//!
//! No panic crosses this boundary: every callback runs its body under `catch_unwind` and turns
//! a panic into an error status (or, where the callback has no status to return, into a
//! harmless default).

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use ort_sys as sys;

use crate::attention;
use crate::kernel::Path;
use crate::op::BitLinear;
use crate::q8::Q8Linear;

/// The ops' domain and names, as the graph's nodes name them.
pub const DOMAIN: &CStr = c"bitnet.onnx";
pub const OP_TYPE: &CStr = c"BitLinear";
pub const Q8_OP_TYPE: &CStr = c"Q8Linear";
pub const GQA_OP_TYPE: &CStr = c"GroupQueryAttention";
/// The API version requested from the runtime and declared in `OrtCustomOp.version`.
const API_VERSION: u32 = sys::ORT_API_VERSION;

const FLOAT: sys::ONNXTensorElementDataType =
    sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
const UINT8: sys::ONNXTensorElementDataType =
    sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
const INT32: sys::ONNXTensorElementDataType =
    sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
const INPUTS: [sys::ONNXTensorElementDataType; 3] = [FLOAT, UINT8, FLOAT];
/// `GroupQueryAttention`: packed q/k/v, past key, past value, seqlens_k, total_sequence_length,
/// cos cache, sin cache (ONNX Runtime's op's inputs without its separate key and value).
const GQA_INPUTS: [sys::ONNXTensorElementDataType; 7] =
    [FLOAT, FLOAT, FLOAT, INT32, INT32, FLOAT, FLOAT];
const GQA_INPUT_NAMES: [&str; 7] = [
    "query",
    "past_key",
    "past_value",
    "seqlens_k",
    "total_sequence_length",
    "cos_cache",
    "sin_cache",
];

/// The ops' descriptions. Statics: they must outlive every session, and hold no runtime state.
/// Both have the same input and output types (float32, uint8, float32 in; float32 out); the
/// callbacks they share tell them apart by name ([`is_q8`]).
static OP: sys::OrtCustomOp = describe(get_name);
static Q8_OP: sys::OrtCustomOp = describe(get_q8_name);
static GQA_OP: sys::OrtCustomOp = describe(get_gqa_name);

type NameFn = unsafe extern "system" fn(*const sys::OrtCustomOp) -> *const c_char;

const fn describe(name: NameFn) -> sys::OrtCustomOp {
    sys::OrtCustomOp {
        version: API_VERSION,
        CreateKernel: None,
        GetName: Some(name),
        GetExecutionProviderType: Some(get_provider),
        GetInputType: Some(get_input_type),
        GetInputTypeCount: Some(get_input_count),
        GetOutputType: Some(get_output_type),
        GetOutputTypeCount: Some(get_output_count),
        KernelCompute: None,
        KernelDestroy: Some(kernel_destroy),
        GetInputCharacteristic: Some(get_characteristic),
        GetOutputCharacteristic: Some(get_characteristic),
        GetInputMemoryType: Some(get_memory_type),
        GetVariadicInputMinArity: Some(get_min_arity),
        GetVariadicInputHomogeneity: Some(get_homogeneity),
        GetVariadicOutputMinArity: Some(get_min_arity),
        GetVariadicOutputHomogeneity: Some(get_homogeneity),
        CreateKernelV2: Some(create_kernel),
        KernelComputeV2: Some(kernel_compute),
        InferOutputShapeFn: None,
        GetStartVersion: Some(get_start_version),
        GetEndVersion: Some(get_end_version),
        GetMayInplace: None,
        ReleaseMayInplace: None,
        GetAliasMap: None,
        ReleaseAliasMap: None,
    }
}

/// Which op a callback was called for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bit,
    Q8,
    Gqa,
}

/// The op a callback was called for, by the description's own name callback (so it does not
/// rely on the statics having distinct addresses).
fn kind(op: *const sys::OrtCustomOp) -> Kind {
    if op.is_null() {
        return Kind::Bit;
    }
    // SAFETY: the runtime passes back one of our static descriptions.
    match unsafe { (*op).GetName } {
        // SAFETY: our own callback, which returns a static C string.
        Some(f) => match unsafe { CStr::from_ptr(f(op)) } {
            n if n == Q8_OP_TYPE => Kind::Q8,
            n if n == GQA_OP_TYPE => Kind::Gqa,
            _ => Kind::Bit,
        },
        None => Kind::Bit,
    }
}

/// Registers the `bitnet.onnx` domain with its three ops on the session options.
///
/// # Safety
/// Called by ONNX Runtime with valid (or null) pointers.
#[no_mangle]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut sys::OrtSessionOptions,
    api_base: *const sys::OrtApiBase,
) -> *mut sys::OrtStatus {
    let res = catch_unwind(|| {
        if api_base.is_null() {
            // No table, so no way to build a status: registering nothing makes the session
            // fail on the unknown op, an ONNX Runtime error.
            return ptr::null_mut();
        }
        // SAFETY: the runtime passes a valid OrtApiBase; GetApi returns null for a version the
        // runtime lacks (an older runtime), else a table valid for the process's lifetime.
        let api = unsafe { ((*api_base).GetApi)(API_VERSION) };
        if api.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: non-null table from the runtime.
        let api = unsafe { &*api };
        if options.is_null() {
            return status(api, "RegisterCustomOps: null session options");
        }
        let mut domain = ptr::null_mut();
        // SAFETY: valid C string and out pointer. The domain is never released: the session
        // options keep only its pointer, and every session made from them reads it; it is a few
        // bytes per registration.
        unsafe {
            if let Err(e) = take(
                api,
                (api.CreateCustomOpDomain)(DOMAIN.as_ptr(), &mut domain),
            ) {
                return status(api, &e);
            }
            for op in [&OP, &Q8_OP, &GQA_OP] {
                if let Err(e) = take(api, (api.CustomOpDomain_Add)(domain, op)) {
                    return status(api, &e);
                }
            }
            if let Err(e) = take(api, (api.AddCustomOpDomain)(options, domain)) {
                return status(api, &e);
            }
        }
        ptr::null_mut()
    });
    res.unwrap_or(ptr::null_mut())
}

/// An error status with this message (interior NULs dropped).
fn status(api: &sys::OrtApi, msg: &str) -> *mut sys::OrtStatus {
    let msg = CString::new(msg.replace('\0', "")).unwrap_or_default();
    // SAFETY: CreateStatus copies the NUL-terminated message.
    unsafe { (api.CreateStatus)(sys::OrtErrorCode::ORT_INVALID_ARGUMENT, msg.as_ptr()).0 }
}

/// Turns a returned status into a `Result`, releasing it.
///
/// # Safety
/// `s` is a status returned by `api` (or null).
unsafe fn take(api: &sys::OrtApi, s: sys::OrtStatusPtr) -> Result<(), String> {
    if s.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status from this runtime; its message lives until it is released.
    unsafe {
        let msg = CStr::from_ptr((api.GetErrorMessage)(s.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(s.0);
        Err(msg)
    }
}

unsafe extern "system" fn get_name(_: *const sys::OrtCustomOp) -> *const c_char {
    OP_TYPE.as_ptr()
}

unsafe extern "system" fn get_q8_name(_: *const sys::OrtCustomOp) -> *const c_char {
    Q8_OP_TYPE.as_ptr()
}

unsafe extern "system" fn get_gqa_name(_: *const sys::OrtCustomOp) -> *const c_char {
    GQA_OP_TYPE.as_ptr()
}

unsafe extern "system" fn get_provider(_: *const sys::OrtCustomOp) -> *const c_char {
    c"CPUExecutionProvider".as_ptr()
}

fn input_types(op: *const sys::OrtCustomOp) -> &'static [sys::ONNXTensorElementDataType] {
    if kind(op) == Kind::Gqa {
        &GQA_INPUTS
    } else {
        &INPUTS
    }
}

unsafe extern "system" fn get_input_type(
    op: *const sys::OrtCustomOp,
    i: usize,
) -> sys::ONNXTensorElementDataType {
    input_types(op)
        .get(i)
        .copied()
        .unwrap_or(sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED)
}

unsafe extern "system" fn get_input_count(op: *const sys::OrtCustomOp) -> usize {
    input_types(op).len()
}

unsafe extern "system" fn get_output_type(
    _: *const sys::OrtCustomOp,
    _: usize,
) -> sys::ONNXTensorElementDataType {
    FLOAT
}

unsafe extern "system" fn get_output_count(op: *const sys::OrtCustomOp) -> usize {
    if kind(op) == Kind::Gqa {
        3
    } else {
        1
    }
}

unsafe extern "system" fn get_characteristic(
    _: *const sys::OrtCustomOp,
    _: usize,
) -> sys::OrtCustomOpInputOutputCharacteristic {
    sys::OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
}

unsafe extern "system" fn get_memory_type(_: *const sys::OrtCustomOp, _: usize) -> sys::OrtMemType {
    sys::OrtMemType::OrtMemTypeDefault
}

unsafe extern "system" fn get_min_arity(_: *const sys::OrtCustomOp) -> i32 {
    1
}

unsafe extern "system" fn get_homogeneity(_: *const sys::OrtCustomOp) -> i32 {
    1
}

unsafe extern "system" fn get_start_version(_: *const sys::OrtCustomOp) -> i32 {
    1
}

unsafe extern "system" fn get_end_version(_: *const sys::OrtCustomOp) -> i32 {
    i32::MAX
}

/// A node's op, its attributes checked.
enum Node {
    Bit(BitLinear),
    Q8(Q8Linear),
    Gqa(Gqa),
}

/// `GroupQueryAttention`'s attributes.
struct Gqa {
    heads: usize,
    kv_heads: usize,
    /// 0: `1 / sqrt(head size)`, as ONNX Runtime's op.
    scale: f32,
    interleaved: bool,
}

impl Node {
    fn name(&self) -> &'static str {
        match self {
            Node::Bit(_) => "BitLinear",
            Node::Q8(_) => "Q8Linear",
            Node::Gqa(_) => "GroupQueryAttention",
        }
    }

    /// The inputs' names, for messages.
    fn inputs(&self) -> &'static [&'static str] {
        match self {
            Node::Bit(_) => &["X", "W", "C"],
            Node::Q8(_) => &["X", "W", "S"],
            Node::Gqa(_) => &GQA_INPUT_NAMES,
        }
    }
}

/// One node's kernel: its attributes, the path chosen for this CPU, and the runtime's table.
struct Kernel {
    api: *const sys::OrtApi,
    op: Node,
    path: Path,
}

unsafe extern "system" fn create_kernel(
    this: *const sys::OrtCustomOp,
    api: *const sys::OrtApi,
    info: *const sys::OrtKernelInfo,
    out: *mut *mut c_void,
) -> sys::OrtStatusPtr {
    if api.is_null() {
        return sys::OrtStatusPtr(ptr::null_mut());
    }
    // SAFETY: the runtime hands a valid table, kernel info and out pointer.
    let table = unsafe { &*api };
    let which = kind(this);
    let opname = match which {
        Kind::Bit => "BitLinear",
        Kind::Q8 => "Q8Linear",
        Kind::Gqa => "GroupQueryAttention",
    };
    let res = catch_unwind(AssertUnwindSafe(|| -> Result<*mut c_void, String> {
        let op = if which == Kind::Gqa {
            // SAFETY: `info` is valid for this call.
            let (heads, kv_heads, scale, interleaved) = unsafe {
                (
                    attr_i64(table, info, opname, c"num_heads")?,
                    attr_i64(table, info, opname, c"kv_num_heads")?,
                    optional_attr_f32(table, info, opname, c"scale")?.unwrap_or(0.0),
                    optional_attr_i64(table, info, opname, c"rotary_interleaved")?.unwrap_or(0),
                )
            };
            let bad = |what: &str, v: i64| format!("bitnet.onnx {opname}: attribute {what} = {v}");
            if !(1..=4096).contains(&heads) {
                return Err(bad("num_heads", heads));
            }
            if !(1..=4096).contains(&kv_heads) || heads % kv_heads != 0 {
                return Err(bad("kv_num_heads", kv_heads));
            }
            if !(0..=1).contains(&interleaved) {
                return Err(bad("rotary_interleaved", interleaved));
            }
            if !scale.is_finite() || scale < 0.0 {
                return Err(format!("bitnet.onnx {opname}: attribute scale = {scale}"));
            }
            Node::Gqa(Gqa {
                heads: heads as usize,
                kv_heads: kv_heads as usize,
                scale,
                interleaved: interleaved == 1,
            })
        } else if which == Kind::Q8 {
            // SAFETY: `info` is valid for this call.
            let (k, n, block) = unsafe {
                (
                    attr_i64(table, info, opname, c"K")?,
                    attr_i64(table, info, opname, c"N")?,
                    attr_i64(table, info, opname, c"block_size")?,
                )
            };
            Node::Q8(Q8Linear::new(k, n, block).map_err(|e| e.to_string())?)
        } else {
            // SAFETY: `info` is valid for this call.
            let (k, n, groups, divide, glu) = unsafe {
                (
                    attr_i64(table, info, opname, c"K")?,
                    attr_i64(table, info, opname, c"N")?,
                    attr_i64s(table, info, opname, c"group_sizes")?,
                    attr_i64(table, info, opname, c"divide")?,
                    optional_attr_i64(table, info, opname, c"glu")?.unwrap_or(0),
                )
            };
            Node::Bit(
                BitLinear::new(k, n, &groups, divide)
                    .and_then(|b| b.with_glu(glu))
                    .map_err(|e| e.to_string())?,
            )
        };
        let kernel = Box::new(Kernel {
            api,
            op,
            path: Path::detect(),
        });
        Ok(Box::into_raw(kernel) as *mut c_void)
    }));
    match res {
        Ok(Ok(k)) => {
            // SAFETY: valid out pointer from the runtime.
            unsafe { *out = k };
            sys::OrtStatusPtr(ptr::null_mut())
        }
        Ok(Err(e)) => sys::OrtStatusPtr(status(table, &e)),
        Err(_) => sys::OrtStatusPtr(status(
            table,
            &format!("bitnet.onnx {opname}: panic creating the kernel"),
        )),
    }
}

unsafe extern "system" fn kernel_destroy(kernel: *mut c_void) {
    if !kernel.is_null() {
        // SAFETY: made by `create_kernel` with Box::into_raw, destroyed once by the runtime.
        let _ = catch_unwind(|| drop(unsafe { Box::from_raw(kernel as *mut Kernel) }));
    }
}

/// # Safety
/// `info` valid; `name` NUL-terminated.
unsafe fn attr_i64(
    api: &sys::OrtApi,
    info: *const sys::OrtKernelInfo,
    op: &str,
    name: &CStr,
) -> Result<i64, String> {
    // SAFETY: the caller's contract.
    unsafe { optional_attr_i64(api, info, op, name) }?.ok_or_else(|| {
        format!(
            "bitnet.onnx {op}: attribute {}: missing",
            name.to_string_lossy()
        )
    })
}

/// An attribute the node may leave out: `None` when ONNX Runtime has no attribute of that
/// name (its message says so), an error for anything else (a wrong type, say).
///
/// # Safety
/// `info` valid; `name` NUL-terminated.
unsafe fn optional_attr_i64(
    api: &sys::OrtApi,
    info: *const sys::OrtKernelInfo,
    op: &str,
    name: &CStr,
) -> Result<Option<i64>, String> {
    // SAFETY: the caller's contract.
    unsafe { optional_attr(api, info, op, name, api.KernelInfoGetAttribute_int64) }
}

/// A float attribute the node may leave out (as [`optional_attr_i64`]).
///
/// # Safety
/// `info` valid; `name` NUL-terminated.
unsafe fn optional_attr_f32(
    api: &sys::OrtApi,
    info: *const sys::OrtKernelInfo,
    op: &str,
    name: &CStr,
) -> Result<Option<f32>, String> {
    // SAFETY: the caller's contract.
    unsafe { optional_attr(api, info, op, name, api.KernelInfoGetAttribute_float) }
}

/// Reads one scalar attribute with the runtime's getter `get`.
///
/// # Safety
/// `info` valid; `name` NUL-terminated; `get` one of the runtime's attribute getters for `T`.
unsafe fn optional_attr<T: Default>(
    api: &sys::OrtApi,
    info: *const sys::OrtKernelInfo,
    op: &str,
    name: &CStr,
    get: unsafe extern "system" fn(
        *const sys::OrtKernelInfo,
        *const c_char,
        *mut T,
    ) -> sys::OrtStatusPtr,
) -> Result<Option<T>, String> {
    let mut v = T::default();
    // SAFETY: valid info, name and out pointer.
    match unsafe { take(api, get(info, name.as_ptr(), &mut v)) } {
        Ok(()) => Ok(Some(v)),
        Err(e) if e.contains("No attribute") => Ok(None),
        Err(e) => Err(format!(
            "bitnet.onnx {op}: attribute {}: {e}",
            name.to_string_lossy()
        )),
    }
}

/// # Safety
/// `info` valid; `name` NUL-terminated.
unsafe fn attr_i64s(
    api: &sys::OrtApi,
    info: *const sys::OrtKernelInfo,
    op: &str,
    name: &CStr,
) -> Result<Vec<i64>, String> {
    let what = |e: String| {
        format!(
            "bitnet.onnx {op}: attribute {}: {e}",
            name.to_string_lossy()
        )
    };
    let mut len = 0usize;
    // SAFETY: a null out pointer asks for the length only.
    unsafe {
        take(
            api,
            (api.KernelInfoGetAttributeArray_int64)(info, name.as_ptr(), ptr::null_mut(), &mut len),
        )
    }
    .map_err(what)?;
    if len > 1 << 20 {
        return Err(what(format!("{len} values")));
    }
    let mut v = vec![0i64; len];
    // SAFETY: `v` holds `len` values, the length the runtime just gave.
    unsafe {
        take(
            api,
            (api.KernelInfoGetAttributeArray_int64)(info, name.as_ptr(), v.as_mut_ptr(), &mut len),
        )
    }
    .map_err(what)?;
    v.truncate(len);
    Ok(v)
}

/// An input's element type, shape and data pointer.
///
/// # Safety
/// `ctx` valid for this compute call.
unsafe fn input(
    api: &sys::OrtApi,
    ctx: *mut sys::OrtKernelContext,
    node: &Node,
    i: usize,
) -> Result<(sys::ONNXTensorElementDataType, Vec<i64>, *mut c_void), String> {
    let name = node.inputs()[i];
    let op = node.name();
    let what = |e: String| format!("bitnet.onnx {op}: input {name}: {e}");
    let mut value: *const sys::OrtValue = ptr::null();
    // SAFETY: valid context and out pointers; the tensor info is released before returning.
    unsafe {
        take(api, (api.KernelContext_GetInput)(ctx, i, &mut value)).map_err(what)?;
        if value.is_null() {
            return Err(what("missing".into()));
        }
        let mut info = ptr::null_mut();
        take(api, (api.GetTensorTypeAndShape)(value, &mut info)).map_err(what)?;
        let mut ty = sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
        let mut rank = 0usize;
        let mut res = take(api, (api.GetTensorElementType)(info, &mut ty))
            .and_then(|_| take(api, (api.GetDimensionsCount)(info, &mut rank)));
        let mut dims = vec![0i64; if res.is_ok() { rank.min(64) } else { 0 }];
        if res.is_ok() && rank > 64 {
            res = Err(format!("rank {rank}"));
        }
        if res.is_ok() {
            res = take(
                api,
                (api.GetDimensions)(info, dims.as_mut_ptr(), dims.len()),
            );
        }
        (api.ReleaseTensorTypeAndShapeInfo)(info);
        res.map_err(what)?;
        let mut data = ptr::null_mut();
        take(
            api,
            (api.GetTensorMutableData)(value as *mut sys::OrtValue, &mut data),
        )
        .map_err(what)?;
        Ok((ty, dims, data))
    }
}

/// Every input's shape and data pointer, after checking their count and element types against
/// `types` (the node's own input list, named by `node.inputs()`).
///
/// # Safety
/// `ctx` valid for this compute call.
unsafe fn inputs(
    api: &sys::OrtApi,
    ctx: *mut sys::OrtKernelContext,
    node: &Node,
    types: &[sys::ONNXTensorElementDataType],
) -> Result<Vec<(Vec<i64>, *mut c_void)>, String> {
    let (op, names) = (node.name(), node.inputs());
    let mut count = 0usize;
    // SAFETY: valid context and out pointer.
    unsafe { take(api, (api.KernelContext_GetInputCount)(ctx, &mut count)) }?;
    if count != types.len() {
        return Err(format!(
            "bitnet.onnx {op}: {count} inputs, expected {} ({})",
            types.len(),
            names.join(", ")
        ));
    }
    let mut ins = Vec::with_capacity(count);
    for (i, want) in types.iter().enumerate() {
        // SAFETY: valid context.
        let (ty, dims, data) = unsafe { input(api, ctx, node, i) }?;
        if ty != *want {
            return Err(format!(
                "bitnet.onnx {op}: input {} has element type {}, expected {}",
                names[i], ty as i32, *want as i32
            ));
        }
        ins.push((dims, data));
    }
    Ok(ins)
}

/// Runs tasks `0..tasks` of `f` on the session's intra-op threads
/// (`KernelContext_ParallelFor`), or here one after another when the runtime has no pool or
/// refuses: every task writes all of its outputs, so running them all again gives the same
/// result.
///
/// # Safety
/// `ctx` valid for this compute call.
unsafe fn parallel(
    api: &sys::OrtApi,
    ctx: *mut sys::OrtKernelContext,
    tasks: usize,
    f: &(dyn Fn(usize) + Sync),
) {
    // SAFETY: `f` outlives the call (ParallelFor returns when every task has run);
    // `trampoline` only reads it.
    let st = unsafe {
        (api.KernelContext_ParallelFor)(ctx, trampoline, tasks, 0, &f as *const _ as *mut c_void)
    };
    // SAFETY: a status from this runtime.
    if unsafe { take(api, st) }.is_err() {
        crate::op::serial(tasks, f);
    }
}

/// A typed slice over a tensor's data, checked for null and alignment.
///
/// # Safety
/// `data` points to at least `len` elements of `T` that live as long as `'a` and that nothing
/// writes while the slice is alive (ONNX Runtime's inputs during one compute call).
unsafe fn slice<'a, T>(
    data: *mut c_void,
    len: usize,
    op: &str,
    what: &str,
) -> Result<&'a [T], String> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() || !(data as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(format!("bitnet.onnx {op}: {what} has no aligned data"));
    }
    // SAFETY: the caller's contract, non-null and aligned (checked).
    Ok(unsafe { std::slice::from_raw_parts(data as *const T, len) })
}

unsafe extern "system" fn kernel_compute(
    kernel: *mut c_void,
    ctx: *mut sys::OrtKernelContext,
) -> sys::OrtStatusPtr {
    if kernel.is_null() {
        return sys::OrtStatusPtr(ptr::null_mut());
    }
    // SAFETY: made by `create_kernel`, alive until `kernel_destroy`; the runtime may call
    // compute from several threads at once, and it is only read.
    let k = unsafe { &*(kernel as *const Kernel) };
    // SAFETY: the table given at creation, valid for the runtime's lifetime.
    let api = unsafe { &*k.api };
    let res = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        // SAFETY: `ctx` is valid for this call.
        unsafe { compute(api, k, ctx) }
    }));
    match res {
        Ok(Ok(())) => sys::OrtStatusPtr(ptr::null_mut()),
        Ok(Err(e)) => sys::OrtStatusPtr(status(api, &e)),
        Err(_) => sys::OrtStatusPtr(status(
            api,
            &format!("bitnet.onnx {}: panic in compute", k.op.name()),
        )),
    }
}

/// # Safety
/// `ctx` valid for this compute call.
unsafe fn compute(
    api: &sys::OrtApi,
    k: &Kernel,
    ctx: *mut sys::OrtKernelContext,
) -> Result<(), String> {
    if let Node::Gqa(a) = &k.op {
        // SAFETY: the caller's contract.
        return unsafe { compute_gqa(api, k, a, ctx) };
    }
    let op = k.op.name();
    let names = k.op.inputs();
    // SAFETY: the caller's contract.
    let ins = unsafe { inputs(api, ctx, &k.op, &INPUTS) }?;
    let (m, out_shape) = match &k.op {
        Node::Bit(b) => b
            .check(&ins[0].0, &ins[1].0, &ins[2].0)
            .map_err(|e| e.to_string())?,
        Node::Q8(q) => q
            .check(&ins[0].0, &ins[1].0, &ins[2].0)
            .map_err(|e| e.to_string())?,
        Node::Gqa(_) => unreachable!("handled above"),
    };
    // Element counts of W and C/S, and K and N, from the checked attributes.
    // `n` here is the output's last dimension (half of N with a GLU).
    let (kk, n, w_len, c_len) = match &k.op {
        Node::Bit(b) => (
            b.k,
            b.outputs(),
            b.n * crate::layout::row_bytes(b.k),
            b.groups,
        ),
        Node::Q8(q) => (q.k, q.n, q.n * q.blocks() * q.block, q.n * q.blocks()),
        Node::Gqa(_) => unreachable!("handled above"),
    };
    let x_len = m
        .checked_mul(kk)
        .ok_or_else(|| format!("bitnet.onnx {op}: X too large"))?;
    // SAFETY: the shapes were checked against these lengths; ORT keeps inputs alive and
    // unwritten during compute.
    let (x, w, c) = unsafe {
        (
            slice::<f32>(ins[0].1, x_len, op, "input X")?,
            slice::<u8>(ins[1].1, w_len, op, "input W")?,
            slice::<f32>(ins[2].1, c_len, op, &format!("input {}", names[2]))?,
        )
    };
    let mut out: *mut sys::OrtValue = ptr::null_mut();
    let mut ydata = ptr::null_mut();
    // SAFETY: valid context, shape array and out pointers.
    unsafe {
        take(
            api,
            (api.KernelContext_GetOutput)(ctx, 0, out_shape.as_ptr(), out_shape.len(), &mut out),
        )?;
        if out.is_null() {
            return Err(format!("bitnet.onnx {op}: no output tensor"));
        }
        take(api, (api.GetTensorMutableData)(out, &mut ydata))?;
    }
    let y_len = m * n;
    if y_len == 0 {
        return Ok(());
    }
    if ydata.is_null() || !(ydata as usize).is_multiple_of(std::mem::align_of::<f32>()) {
        return Err(format!("bitnet.onnx {op}: output has no aligned data"));
    }
    // SAFETY: the output was allocated by the runtime with `out_shape`, `m * n` floats, and
    // is written only by this call.
    let y = unsafe { std::slice::from_raw_parts_mut(ydata as *mut f32, y_len) };
    // SAFETY: `ctx` is valid for this compute call.
    let par = |tasks: usize, f: &(dyn Fn(usize) + Sync)| unsafe { parallel(api, ctx, tasks, f) };
    match &k.op {
        Node::Bit(b) => b
            .compute(k.path, x, m, w, c, y, &par)
            .map_err(|e| e.to_string()),
        Node::Q8(q) => q
            .compute(k.path, x, m, w, c, y, &par)
            .map_err(|e| e.to_string()),
        Node::Gqa(_) => unreachable!("handled above"),
    }
}

/// Runs task `i` of the closure `data` points at (`&&(dyn Fn(usize) + Sync)`).
unsafe extern "system" fn trampoline(data: *mut c_void, i: usize) {
    // SAFETY: `data` is the `&f` passed to ParallelFor in `compute`, alive during the call.
    let f = unsafe { *(data as *const &(dyn Fn(usize) + Sync)) };
    // The task catches its own panics (op::BitLinear::compute, q8::Q8Linear::compute); this is the last guard, as
    // unwinding into the runtime's C++ would abort the process.
    let _ = catch_unwind(AssertUnwindSafe(|| f(i)));
}

/// A pointer the attention tasks share; each task writes its own rows of the output only.
struct Rows(*mut f32);
// SAFETY: tasks write disjoint ranges (see `compute_gqa`), and the pointer outlives them.
unsafe impl Sync for Rows {}

impl Rows {
    /// The pointer `i` floats on (a method, so closures capture the `Sync` wrapper whole).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `GroupQueryAttention`: checks the seven inputs against each other and the attributes,
/// sizes the outputs (`[B, S, H * D]`, and the two caches `[B, G, max(total, past length), D]`),
/// copies the past into the present caches unless the runtime handed the same buffers (as
/// onnxruntime-genai does with `past_present_share_buffer`), writes the new keys and values,
/// then runs one task per sequence, new position and key/value head on the intra-op threads.
///
/// # Safety
/// `ctx` valid for this compute call.
unsafe fn compute_gqa(
    api: &sys::OrtApi,
    k: &Kernel,
    a: &Gqa,
    ctx: *mut sys::OrtKernelContext,
) -> Result<(), String> {
    let op = "GroupQueryAttention";
    let fail = |m: String| format!("bitnet.onnx {op}: {m}");
    // SAFETY: the caller's contract.
    let ins = unsafe { inputs(api, ctx, &k.op, &GQA_INPUTS) }?;
    let shape = |i: usize| ins[i].0.as_slice();
    let dim = |v: i64| usize::try_from(v).ok();
    let (b, s, w) = match shape(0) {
        &[b, s, w] => match (dim(b), dim(s), dim(w)) {
            (Some(b), Some(s), Some(w)) => (b, s, w),
            _ => return Err(fail(format!("input query has shape {:?}", shape(0)))),
        },
        d => {
            return Err(fail(format!(
                "input query has shape {d:?}, expected [batch, sequence, width]"
            )))
        }
    };
    let heads_total = a.heads + 2 * a.kv_heads;
    if !w.is_multiple_of(heads_total) {
        return Err(fail(format!(
            "input query's width {w} is not (num_heads + 2 kv_num_heads) = {heads_total} heads"
        )));
    }
    let d = w / heads_total;
    let past = shape(1).to_vec();
    if past.len() != 4 || shape(2) != past.as_slice() {
        return Err(fail(format!(
            "inputs past_key {past:?} and past_value {:?} must be one shape [batch, kv_num_heads, length, head size]",
            shape(2)
        )));
    }
    let lp = dim(past[2]).ok_or_else(|| fail(format!("input past_key has shape {past:?}")))?;
    if past[0] != b as i64 || past[1] != a.kv_heads as i64 || past[3] != d as i64 {
        return Err(fail(format!(
            "input past_key has shape {past:?}, expected [{b}, {}, length, {d}]",
            a.kv_heads
        )));
    }
    if shape(3) != [b as i64] {
        return Err(fail(format!(
            "input seqlens_k has shape {:?}, expected [{b}]",
            shape(3)
        )));
    }
    if !(shape(4).is_empty() || shape(4) == [1]) {
        return Err(fail(format!(
            "input total_sequence_length has shape {:?}, expected one value",
            shape(4)
        )));
    }
    let (rows, half) = match shape(5) {
        &[p, r] if shape(6) == [p, r] => match (dim(p), dim(r)) {
            (Some(p), Some(r)) if r >= 1 => (p, r),
            _ => return Err(fail(format!("input cos_cache has shape {:?}", shape(5)))),
        },
        _ => {
            return Err(fail(format!(
            "inputs cos_cache {:?} and sin_cache {:?} must be one shape [positions, rotary half]",
            shape(5),
            shape(6)
        )))
        }
    };
    // SAFETY: shapes checked above; the runtime keeps inputs alive during compute.
    let (seqlens, total) = unsafe {
        (
            slice::<i32>(ins[3].1, b, op, "input seqlens_k")?,
            slice::<i32>(ins[4].1, 1, op, "input total_sequence_length")?[0],
        )
    };
    let cache = lp.max(usize::try_from(total).unwrap_or(0));
    let dims = attention::Dims {
        batch: b,
        seq: s,
        heads: a.heads,
        kv_heads: a.kv_heads,
        head: d,
        cache,
        rotary: half,
        rotary_rows: rows,
        interleaved: a.interleaved,
        scale: if a.scale == 0.0 {
            1.0 / (d as f32).sqrt()
        } else {
            a.scale
        },
    };
    let plan = dims.plan(seqlens, total).map_err(|e| e.to_string())?;
    let too_big = || fail("tensor sizes overflow".into());
    let q_len = b
        .checked_mul(s)
        .and_then(|x| x.checked_mul(w))
        .ok_or_else(too_big)?;
    let out_len = b
        .checked_mul(s)
        .and_then(|x| x.checked_mul(a.heads * d))
        .ok_or_else(too_big)?;
    let kv_len = |l: usize| {
        b.checked_mul(a.kv_heads)
            .and_then(|x| x.checked_mul(l))
            .and_then(|x| x.checked_mul(d))
            .ok_or_else(too_big)
    };
    let (past_len, cache_len) = (kv_len(lp)?, kv_len(cache)?);
    let rot_len = rows.checked_mul(half).ok_or_else(too_big)?;
    // SAFETY: lengths from the checked shapes; inputs alive and unwritten during compute (the
    // past caches are read only before the present ones are written, below).
    let (qkv, cos, sin) = unsafe {
        (
            slice::<f32>(ins[0].1, q_len, op, "input query")?,
            slice::<f32>(ins[5].1, rot_len, op, "input cos_cache")?,
            slice::<f32>(ins[6].1, rot_len, op, "input sin_cache")?,
        )
    };
    let out_shape = [b as i64, s as i64, (a.heads * d) as i64];
    let cache_shape = [b as i64, a.kv_heads as i64, cache as i64, d as i64];
    let mut ptrs = [ptr::null_mut::<c_void>(); 3];
    for (i, sh) in [&out_shape[..], &cache_shape[..], &cache_shape[..]]
        .into_iter()
        .enumerate()
    {
        let mut v: *mut sys::OrtValue = ptr::null_mut();
        // SAFETY: valid context, shape array and out pointers.
        unsafe {
            take(
                api,
                (api.KernelContext_GetOutput)(ctx, i, sh.as_ptr(), sh.len(), &mut v),
            )?;
            if v.is_null() {
                return Err(fail(format!("no output {i}")));
            }
            take(api, (api.GetTensorMutableData)(v, &mut ptrs[i]))?;
        }
        let len = if i == 0 { out_len } else { cache_len };
        if len > 0 && (ptrs[i].is_null() || !(ptrs[i] as usize).is_multiple_of(4)) {
            return Err(fail(format!("output {i} has no aligned data")));
        }
    }
    if out_len == 0 {
        return Ok(());
    }
    for (i, past_in) in [(1usize, ins[1].1), (2, ins[2].1)] {
        if ptrs[i] == past_in {
            if lp != cache {
                return Err(fail(format!(
                    "past and present {} share a buffer of {lp} positions, {cache} needed",
                    if i == 1 { "keys" } else { "values" }
                )));
            }
            continue;
        }
        // SAFETY: a distinct buffer of `past_len` floats, alive during compute.
        let from = unsafe { slice::<f32>(past_in, past_len, op, GQA_INPUT_NAMES[i]) }?;
        // SAFETY: the runtime's output of `cache_len` floats, written only here.
        let to = unsafe { std::slice::from_raw_parts_mut(ptrs[i] as *mut f32, cache_len) };
        to.fill(0.0);
        if lp > 0 {
            for (dst, src) in to
                .chunks_exact_mut(cache * d)
                .zip(from.chunks_exact(lp * d))
            {
                dst[..lp * d].copy_from_slice(src);
            }
        }
    }
    // SAFETY: the present caches, `cache_len` floats each, distinct outputs; no other slice of
    // them is alive (the past inputs, when they share these buffers, were not made slices).
    let (keys, values) = unsafe {
        (
            std::slice::from_raw_parts_mut(ptrs[1] as *mut f32, cache_len),
            std::slice::from_raw_parts_mut(ptrs[2] as *mut f32, cache_len),
        )
    };
    attention::store(&dims, &plan, qkv, cos, sin, keys, values);
    let (keys, values) = (&*keys, &*values);
    let per = a.heads / a.kv_heads;
    let out = Rows(ptrs[0] as *mut f32);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let tasks = b * s * a.kv_heads;
    let (path, kv_heads, heads) = (k.path, a.kv_heads, a.heads);
    let task = |t: usize| {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let (bs, kv) = (t / kv_heads, t % kv_heads);
            let at = (bs * heads + kv * per) * d;
            // SAFETY: task `t` alone writes floats `at .. at + per * d` of the output
            // (`out_len` floats: `bs < b * s`, `kv * per + per <= heads`).
            let o = unsafe { std::slice::from_raw_parts_mut(out.at(at), per * d) };
            let mut scratch = Vec::new();
            attention::attend_task(
                path,
                &dims,
                &plan,
                qkv,
                cos,
                sin,
                keys,
                values,
                (bs / s, kv, bs % s),
                o,
                &mut scratch,
            );
        }));
        if r.is_err() {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    // SAFETY: `ctx` is valid for this compute call.
    unsafe { parallel(api, ctx, tasks, &task) };
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(fail("panic in an attention task".into()));
    }
    Ok(())
}
