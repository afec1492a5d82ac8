"""Run first by `make sanitize`: proves the tests that follow use the sanitized extension with
AddressSanitizer active, so a clean run means something. Not collected by the main pytest run."""

from __future__ import annotations

import os
from pathlib import Path

from pathrt.kernels import native as extension


def test_the_sanitized_extension_is_loaded() -> None:
    assert extension.EXTENSION is not None
    assert Path(extension.EXTENSION.__file__).resolve() == Path(os.environ["PATHRT_EXTENSION_FILE"]).resolve()
    assert "build/sanitize" in extension.EXTENSION.__file__
    assert all(kernel == "native" for kernel in (impl["CPU"] for impl in extension.implementations().values()))


def test_address_sanitizer_is_active() -> None:
    maps = Path("/proc/self/maps").read_text()
    assert "libasan" in maps and "libubsan" in maps
    assert b"__asan_report" in Path(extension.EXTENSION.__file__).read_bytes()  # the module is instrumented
