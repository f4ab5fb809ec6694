"""Native libraries' chatter held back: TensorFlow, LiteRT and absl write some lines
straight to the process's stderr (file descriptor 2), where Python's logging and
`TF_CPP_MIN_LOG_LEVEL` cannot reach them (`fully_quantize: 0, ...` from the TFLite
converter, `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` from LiteRT)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# Lines that say nothing to a user: start-up and converter/interpreter information.
NOISE = ("absl::InitializeLog", "cudart_stub", "cuda_dnn", "cuda_fft", "cuda_blas",
         "oneDNN custom operations", "computation_placer", "Unable to register",
         "TF-TRT Warning", "This TensorFlow binary is optimized", "rebuild TensorFlow",
         "cuInit", "failed call to cuInit", "E0000 00:00:", "W0000 00:00:", "I0000 00:00:",
         "fully_quantize: ", "Created TensorFlow Lite XNNPACK delegate",
         "Estimated count of arithmetic ops", "TensorFlow Lite XNNPACK delegate")


@contextlib.contextmanager
def native_stderr_filtered(noise=NOISE):
    """Captures what the block writes to file descriptor 2 and passes on every line
    that is not `noise` (everything, if the block raises).

    ```python
    with native_stderr_filtered():
        interpreter.allocate_tensors()
    ```
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (some notebooks)
        yield
        return
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines()
                    if failed or not any(n in line for n in noise)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def progress_verbosity():
    """Keras's `verbose` for a progress bar on this stdout: 1 (the live bar) on a
    terminal, else 2 (one line at the end). Keras's bar writes ANSI colour codes
    whenever the platform is POSIX, even into a file or a pipe.

    ```python
    model.predict(x, verbose=progress_verbosity())
    ```
    """
    stdout = sys.stdout
    return 1 if hasattr(stdout, "isatty") and stdout.isatty() else 2
