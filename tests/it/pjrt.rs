//! The PJRT layer against JAX: programs that `scripts/export_pjrt_fixtures.py` exported into
//! `hlo/pjrt/`, with the inputs and JAX's outputs saved beside them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flaxlayer::pjrt::{Buffer, Client, CompileOptions, Device, LoadedExecutable, Program};
use flaxlayer::{DType, Error};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo/pjrt")
}

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| Client::new(None).expect("a PJRT plugin (run scripts/setup.sh)"))
}

fn device() -> Device {
    client().device(0).unwrap()
}

/// (dtype, dims, bytes) of every tensor in a fixture's safetensors, by name.
struct Saved(Vec<u8>);

impl Saved {
    fn load(name: &str) -> Saved {
        Saved(std::fs::read(fixtures().join(format!("{name}.safetensors"))).unwrap())
    }
    fn get(&self, key: &str) -> (DType, Vec<i64>, Vec<u8>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(key).unwrap();
        let dims = t.shape().iter().map(|&d| d as i64).collect();
        (DType::from_safetensors(t.dtype()).unwrap(), dims, t.data().to_vec())
    }
    fn count(&self, prefix: &str) -> usize {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        st.names().iter().filter(|n| n.starts_with(prefix)).count()
    }
    fn inputs(&self) -> Vec<Buffer> {
        (0..self.count("in/"))
            .map(|i| {
                let (dt, dims, bytes) = self.get(&format!("in/{i}"));
                client().buffer_from_bytes(dt, &dims, &bytes, &device()).unwrap()
            })
            .collect()
    }
}

/// Compiles a fixture program, with the input signature of JAX's saved arguments.
fn compile(file: &str) -> LoadedExecutable {
    let code = std::fs::read(fixtures().join(file)).unwrap();
    let name = file.split('.').next().unwrap();
    let signature = crate::common::signature_of(&Saved::load(name).inputs());
    client().compile(Program::Mlir(&code), &CompileOptions::default()).unwrap().with_input_signature(signature)
}

fn to_f64(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    let c = |n: usize| bytes.chunks_exact(n);
    match dtype {
        DType::F32 => c(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        DType::F64 => c(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        DType::BF16 => c(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64()).collect(),
        DType::I32 => c(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        DType::I64 => c(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
        DType::Bool => bytes.iter().map(|&b| b as f64).collect(),
        other => panic!("no conversion for {other}"),
    }
}

/// Checks every output against JAX's and returns the max abs error.
fn check_outputs(name: &str, outputs: &[Buffer]) -> f64 {
    let saved = Saved::load(name);
    assert_eq!(outputs.len(), saved.count("out/"), "{name}: output count");
    let mut worst = 0f64;
    for (i, out) in outputs.iter().enumerate() {
        let (dt, dims, want) = saved.get(&format!("out/{i}"));
        assert_eq!(out.dtype(), dt, "{name} out/{i} dtype");
        assert_eq!(out.dims(), &dims[..], "{name} out/{i} dims");
        let mut got = vec![0u8; out.host_size_in_bytes()];
        out.copy_to_host_bytes(&mut got).unwrap();
        let err = to_f64(dt, &got)
            .iter()
            .zip(to_f64(dt, &want))
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        worst = worst.max(err);
    }
    println!("{name}: max abs error vs JAX = {worst:e}");
    worst
}

fn run(name: &str, file: &str) -> f64 {
    let exe = compile(file);
    let inputs = Saved::load(name).inputs();
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let outs = exe.execute(&refs, &vec![false; refs.len()]).unwrap();
    check_outputs(name, &outs)
}

#[test]
fn client_reports_platform_and_devices() {
    let c = client();
    assert_eq!(c.platform_name().unwrap(), "cpu");
    assert!(!c.platform_version().unwrap().is_empty());
    let devices = c.devices().unwrap();
    assert!(!devices.is_empty());
    assert_eq!(devices[0].kind().unwrap().to_lowercase(), "cpu");
    let (major, _) = c.plugin().api_version();
    assert_eq!(major, 0);
}

#[test]
fn mlp_bytecode_matches_jax() {
    assert!(run("mlp", "mlp.mlirbc") < 1e-6);
}

#[test]
fn mlp_text_matches_jax() {
    assert!(run("mlp", "mlp.mlir") < 1e-6);
}

#[test]
fn mixed_dtypes_match_jax_exactly() {
    assert_eq!(run("mixed", "mixed.mlirbc"), 0.0);
}

#[test]
fn buffers_round_trip_typed_slices() {
    let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    let b = client().buffer_from_slice(&data, &[3, 4], &device()).unwrap();
    assert_eq!(b.dtype(), DType::F32);
    assert_eq!(b.dims(), &[3, 4]);
    assert_eq!(b.to_vec::<f32>().unwrap(), data);
    let mut wrong = vec![0i32; 12];
    assert!(matches!(b.copy_to_host(&mut wrong), Err(Error::DTypeMismatch { .. })));
    let mut short = vec![0f32; 11];
    assert!(matches!(b.copy_to_host(&mut short), Err(Error::SizeMismatch { .. })));
    let bad = client().buffer_from_slice(&data, &[5, 4], &device());
    assert!(matches!(bad, Err(Error::SizeMismatch { expected: 80, got: 48, .. })));
}

#[test]
fn donated_input_is_consumed_and_borrowed_input_is_kept() {
    let exe = compile("donate.mlirbc");
    let saved = Saved::load("donate");
    let inputs = saved.inputs();
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let kept = exe.execute(&refs, &[false, false]).unwrap();
    assert!(!inputs[0].is_deleted().unwrap(), "an input not marked for donation must survive");
    check_outputs("donate", &kept);
    let outs = exe.execute(&refs, &[true, false]).unwrap();
    assert!(inputs[0].is_deleted().unwrap(), "the donated state buffer is consumed");
    assert!(!inputs[1].is_deleted().unwrap());
    check_outputs("donate", &outs);
    // Using the donated buffer again is an error, not a crash.
    assert!(exe.execute(&refs, &[false, false]).is_err());
}

#[test]
fn serialized_executable_runs_the_same() {
    let exe = compile("mlp.mlirbc");
    let bytes = exe.serialize().unwrap();
    assert!(!bytes.is_empty());
    let inputs = Saved::load("mlp").inputs();
    // SAFETY: the bytes `serialize` just wrote in this process, on this plugin.
    let again = unsafe { client().deserialize_executable(&bytes) }.unwrap();
    let err = again.execute(&inputs.iter().collect::<Vec<_>>(), &[false; 5]).unwrap_err();
    assert!(err.to_string().contains("no input signature"), "an executable without a signature does not run: {err}");
    let again = again.with_input_signature(crate::common::signature_of(&inputs));
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let outs = again.execute(&refs, &[false; 5]).unwrap();
    assert!(check_outputs("mlp", &outs) < 1e-6);
    // SAFETY: bytes that are no executable at all: the plugin's parser refuses them (a payload
    // crafted to pass it is what the function's safety contract is about).
    assert!(unsafe { client().deserialize_executable(b"not an executable") }.is_err());
}

#[test]
fn missing_plugin_path_names_it() {
    let path = Path::new("/nonexistent/libpjrt_nothing.so");
    let err = Client::new(Some(path)).unwrap_err();
    let Error::PluginNotFound { tried, hint } = &err else { panic!("{err}") };
    assert_eq!(tried[0].0, path);
    assert!(hint.contains("PJRT_PLUGIN_PATH"));
    assert!(err.to_string().contains("/nonexistent/libpjrt_nothing.so"));
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused() {
    let not_a_library = fixtures().join("mlp.mlir");
    let err = Client::new(Some(&not_a_library)).unwrap_err();
    assert!(matches!(&err, Error::PluginNotFound { tried, .. } if tried[0].1.contains("dlopen")), "{err}");
}

#[test]
fn a_library_without_get_pjrt_api_is_refused() {
    let libm = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("libm");
    let err = Client::new(Some(libm)).unwrap_err();
    assert!(matches!(&err, Error::PluginNotFound { tried, .. } if tried[0].1.contains("GetPjrtApi")), "{err}");
}

#[test]
fn malformed_mlir_is_a_pjrt_error() {
    let err = client().compile(Program::Mlir(b"module { this is not mlir"), &CompileOptions::default());
    assert!(matches!(err, Err(Error::Pjrt { call: "PJRT_Client_Compile", .. })), "{err:?}");
    let err = client().compile(Program::Mlir(b""), &CompileOptions::default());
    assert!(err.is_err());
}

#[test]
fn wrong_argument_count_is_an_error() {
    let exe = compile("mlp.mlirbc");
    let inputs = Saved::load("mlp").inputs();
    let refs: Vec<&Buffer> = inputs.iter().take(4).collect();
    let err = exe.execute(&refs, &[false; 4]).unwrap_err();
    assert!(matches!(err, Error::ArgumentCount { expected: 5, got: 4, .. }), "{err}");
    let err = exe.execute(&refs, &[false; 3]).unwrap_err();
    assert!(matches!(err, Error::ArgumentCount { expected: 4, got: 3, .. }), "{err}");
}

#[test]
fn wrong_dtype_or_shape_is_an_error() {
    let mut inputs = Saved::load("mlp").inputs();
    let signature = crate::common::signature_of(&inputs);
    let exe = compile("mlp.mlirbc").with_input_signature(signature);
    inputs[0] = client().buffer_from_slice(&[0i32; 64], &[4, 16], &device()).unwrap();
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let err = exe.execute(&refs, &[false; 5]).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, expected, got } if what == "argument 0" && *expected == flaxlayer::DType::F32 && *got == flaxlayer::DType::I32),
        "{err}"
    );
    inputs[0] = client().buffer_from_slice(&[0f32; 60], &[4, 15], &device()).unwrap();
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let err = exe.execute(&refs, &[false; 5]).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch { expected, got, .. } if expected == &[4, 16] && got == &[4, 15]), "{err}");
    let err = exe.execute(&refs[..4], &[false; 4]).unwrap_err();
    assert!(matches!(err, Error::ArgumentCount { expected: 5, got: 4, .. }), "{err}");
}

/// Builds a fake plugin: a shared library whose `GetPjrtApi` returns a table of
/// `struct_size` bytes (the API version, then null function pointers) that ends right before
/// an inaccessible page, so that reading one byte past `struct_size` crashes the test.
fn fake_plugin(dir: &Path, major: i32, struct_size: usize) -> PathBuf {
    let src = dir.join(format!("fake_{major}_{struct_size}.c"));
    let so = dir.join(format!("libfake_{major}_{struct_size}.so"));
    std::fs::write(
        &src,
        format!(
            "#include <stddef.h>\n\
             #include <string.h>\n\
             #include <sys/mman.h>\n\
             #include <unistd.h>\n\
             typedef struct {{ size_t struct_size; void* ext; int major; int minor; }} Version;\n\
             const void* GetPjrtApi(void) {{\n\
               size_t page = (size_t)sysconf(_SC_PAGESIZE);\n\
               char* p = mmap(0, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);\n\
               if (p == MAP_FAILED || mprotect(p + page, page, PROT_NONE) != 0) return 0;\n\
               char* table = p + page - {struct_size};\n\
               memset(table, 0, {struct_size});\n\
               *(size_t*)table = {struct_size};\n\
               if ({struct_size} >= 16 + sizeof(Version)) {{\n\
                 Version v = {{ sizeof(Version), 0, {major}, 81 }};\n\
                 memcpy(table + 16, &v, sizeof v);\n\
               }}\n\
               return table;\n\
             }}\n"
        ),
    )
    .unwrap();
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) to build the fake plugin");
    assert!(status.success());
    so
}

/// The table size of a fake plugin with the version and `entries` function pointers.
fn with_entries(entries: usize) -> usize {
    40 + 8 * entries
}

#[test]
fn a_plugin_of_another_major_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = fake_plugin(dir.path(), 1, with_entries(4));
    // SAFETY: the fake plugin this test wrote (its code only returns a table).
    let err = unsafe { flaxlayer::pjrt::Plugin::load_path(&so, flaxlayer::pjrt::PluginSource::Explicit) }.unwrap_err();
    assert!(matches!(err, Error::PluginVersion { major: 1, minor: 81, expected_major: 0, .. }), "{err}");
    let err = Client::new(Some(&so)).unwrap_err();
    assert!(err.to_string().contains("C API 1.81"), "{err}");
}

#[test]
fn a_plugin_missing_an_entry_point_is_unsupported_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // A table that ends before PJRT_Plugin_Initialize: the entry lies past `struct_size`
    // (and past it is an inaccessible page).
    for entries in [0, 3] {
        let short = fake_plugin(dir.path(), 0, with_entries(entries));
        // SAFETY: the fake plugin this test wrote (its code only returns a table).
    let err = unsafe { flaxlayer::pjrt::Plugin::load_path(&short, flaxlayer::pjrt::PluginSource::Explicit) }.unwrap_err();
        assert!(matches!(err, Error::Unsupported { function: "PJRT_Plugin_Initialize" }), "{err}");
    }
    // A table that has the slots, but null: every call is Unsupported too.
    let nulls = fake_plugin(dir.path(), 0, with_entries(8));
    // SAFETY: the fake plugin this test wrote (its code only returns a table).
    let err = unsafe { flaxlayer::pjrt::Plugin::load_path(&nulls, flaxlayer::pjrt::PluginSource::Explicit) }.unwrap_err();
    assert!(matches!(err, Error::Unsupported { function: "PJRT_Plugin_Initialize" }), "{err}");
}

#[test]
fn a_table_too_short_for_its_version_is_refused_without_reading_past_it() {
    // Only `struct_size` and `extension_start`: the version field lies past the table, on the
    // inaccessible page. Reading it would crash; it must be refused instead.
    let dir = tempfile::tempdir().unwrap();
    let so = fake_plugin(dir.path(), 0, 16);
    // SAFETY: the fake plugin this test wrote (its code only returns a table).
    let err = unsafe { flaxlayer::pjrt::Plugin::load_path(&so, flaxlayer::pjrt::PluginSource::Explicit) }.unwrap_err();
    assert!(matches!(err, Error::Unsupported { function: "PJRT_Api.pjrt_api_version" }), "{err}");
}

#[test]
fn a_device_or_buffer_of_another_client_is_refused() {
    let other = Client::new(None).unwrap();
    let foreign = other.device(0).unwrap();
    assert!(!client().owns(&foreign) && other.owns(&foreign));
    let err = client().buffer_from_slice(&[1f32, 2.0], &[2], &foreign).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { what, reason } if what == "buffer_from_bytes" && reason.contains("another PJRT client")),
        "{err}"
    );
    let exe = compile("mlp.mlirbc");
    let mut inputs = Saved::load("mlp").inputs();
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let err = exe.execute_on(&refs, &[false; 5], Some(&foreign)).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { what, .. } if what == "execute_on"), "{err}");
    let (dt, dims, bytes) = Saved::load("mlp").get("in/2");
    inputs[2] = other.buffer_from_bytes(dt, &dims, &bytes, &foreign).unwrap();
    let refs: Vec<&Buffer> = inputs.iter().collect();
    let err = exe.execute(&refs, &[false; 5]).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { what, reason } if what == "argument 2" && reason.contains("another PJRT client")),
        "{err}"
    );
}

#[test]
fn the_cli_keeps_the_plugin_quiet_unless_asked() {
    // The CLI sets TF_CPP_MIN_LOG_LEVEL=1 first thing in main (the library never sets the
    // environment): no absl pre-init warning and no INFO line from the plugin.
    let bin = env!("CARGO_BIN_EXE_flaxlayer");
    let mlp = concat!(env!("CARGO_MANIFEST_DIR"), "/hlo/mlp");
    let plugin = client().plugin().path().to_path_buf();
    let run = |log: Option<&str>| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["inspect", mlp, "--plugin"]).arg(&plugin).env_remove("TF_CPP_MIN_LOG_LEVEL").env_remove("FLAXLAYER_PLUGIN_LOG");
        if let Some(v) = log {
            cmd.env("FLAXLAYER_PLUGIN_LOG", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let quiet = run(None);
    assert!(!quiet.contains("absl::InitializeLog"), "{quiet}");
    assert!(!quiet.contains("create_options"), "{quiet}");
    let loud = run(Some("1"));
    assert!(loud.contains("create_options"), "FLAXLAYER_PLUGIN_LOG=1 shows the plugin's INFO lines:\n{loud}");
}
