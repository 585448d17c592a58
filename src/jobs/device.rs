//! The device a worker trains on, opened by the name its slot gives (`cpu`, `cuda:N`), with
//! the driver's errors explained in the user's terms.

use candle_core::Device;

use super::JobFailure;

/// `cpu` or `cuda:N`. Without the `cuda` feature candle refuses CUDA at runtime, which
/// fails the job with a message saying so.
pub(super) fn open_device(name: &str) -> Result<Device, JobFailure> {
    device_by_name(name).map_err(|detail| {
        JobFailure::fatal(
            "device_unavailable",
            format!("The worker's device `{name}` is not available: {detail}"),
            None,
        )
    })
}

/// The device a worker slot names (`cpu`, `cuda:N`), or why it cannot be opened: `serve`
/// checks every slot with it before it starts, a job again when it runs.
pub fn device_by_name(name: &str) -> Result<Device, String> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    match name.strip_prefix("cuda:").map(str::parse::<usize>) {
        Some(Ok(_)) if !cfg!(feature = "cuda") => Err(
            "this temper is built without CUDA; build it with `cargo build --release --features cuda`"
                .to_string(),
        ),
        Some(Ok(ordinal)) => Device::new_cuda(ordinal).map_err(|e| {
            let detail = match e {
                candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
                other => other.to_string(),
            };
            explain_cuda_error(&detail)
        }),
        _ => Err("expected `cpu` or `cuda:N`".to_string()),
    }
}

/// The driver's error with what it means for the user: the common ones are a machine with
/// no NVIDIA driver (the toolkit's stub libcuda answers every call with
/// CUDA_ERROR_STUB_LIBRARY) and an ordinal past the last GPU.
fn explain_cuda_error(detail: &str) -> String {
    let hint = if detail.contains("CUDA_ERROR_STUB_LIBRARY") {
        "no NVIDIA driver is installed (libcuda.so.1 is the CUDA toolkit's stub); run where \
         the driver is, or in Docker with `--gpus all`"
    } else if detail.contains("CUDA_ERROR_NO_DEVICE")
        || detail.contains("CUDA_ERROR_INVALID_DEVICE")
    {
        "no such GPU; `nvidia-smi -L` lists the ones this machine has, numbered from 0"
    } else if detail.contains("CUDA_ERROR_INSUFFICIENT_DRIVER")
        || detail.contains("UNSUPPORTED_PTX")
    {
        "the NVIDIA driver is older than the CUDA this temper was built with; update the \
         driver or build with an older toolkit (see the README's GPU section)"
    } else {
        return detail.to_string();
    };
    format!("{hint} ({detail})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_cuda_without_the_feature_is_a_clear_fatal() {
        assert!(matches!(open_device("cpu"), Ok(Device::Cpu)));
        let Err(JobFailure::Fatal { code, message, .. }) = open_device("tpu") else {
            panic!("unknown device must fail");
        };
        assert_eq!(code, "device_unavailable");
        assert!(message.contains("`tpu`"), "{message}");
        if !cfg!(feature = "cuda") {
            let Err(JobFailure::Fatal { message, .. }) = open_device("cuda:0") else {
                panic!("cuda without the feature must fail");
            };
            assert!(message.contains("`cuda:0`"), "{message}");
        }
    }

    #[test]
    fn driver_errors_say_what_to_do() {
        let stub = explain_cuda_error(
            r#"DriverError(CUDA_ERROR_STUB_LIBRARY, "<Failure when calling cuGetErrorString()>")"#,
        );
        assert!(stub.starts_with("no NVIDIA driver is installed"), "{stub}");
        assert!(stub.contains("CUDA_ERROR_STUB_LIBRARY"), "{stub}");
        let ordinal = explain_cuda_error("DriverError(CUDA_ERROR_INVALID_DEVICE, \"invalid\")");
        assert!(ordinal.starts_with("no such GPU"), "{ordinal}");
        let old = explain_cuda_error("DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"\")");
        assert!(old.contains("older than the CUDA"), "{old}");
        assert_eq!(explain_cuda_error("out of memory"), "out of memory");
    }
}
