"""The single-defect cases of the ``operand`` rules: operands of GEMM, COPY and epilogues: presence,
handles (freed, foreign, resubmitted after a FREE), dtype, shape, leading dimension, alignment,
bounds, batch stride.

See :mod:`ffaccel.conformance.errors` for how a case is built and judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ...abi import Copy, Gemm, Matrix, PostOpDesc, encode_submission
from ...spec import Engine, PostOpKind
from .harness import BF16, FENCE_WAIT_NS, JUNK, Builder, Catalogue, Env, K, M, N, ValidGemm, patch_cmd


def _absent(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        return s.submit(s.gemm(**({role: None} if bad else {})))
    return build


def _c_absent_beta(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    return s.submit(s.gemm(c=None, beta=(2 if s.is_int else 0.5) if bad else 0))


def _epi_absent(kind: PostOpKind) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        shape = {PostOpKind.BIAS_N: (1, N), PostOpKind.BIAS_M: (M, 1), PostOpKind.ADD: (M, N)}[kind]
        operand = None if bad else s.vector(s.d_dt, *shape)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=operand),)))
    return build


def _freed(role: str) -> Builder:
    """The operand ``role`` moved to a buffer of its own, which the defective twin frees first."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        epi: tuple[PostOpDesc, ...] = ()
        if role in ("a", "b", "c", "d"):
            old: Matrix = getattr(s, role)
            dt = s.dt if role in ("a", "b") else s.d_dt  # the device's own combination
            buf = env.filled(dt, old.rows * old.cols)
            mat = buf.matrix(dt, old.rows, old.cols)
            kw: dict[str, Any] = {role: mat}
            if role == "d":
                kw["c"] = None  # keep C out of the way: this case is about D's handle
                kw["beta"] = 0
        else:
            kind, shape = {"bias": (PostOpKind.BIAS_N, (1, N)), "add": (PostOpKind.ADD, (M, N))}[role]
            acc = np.int32 if s.is_int else np.float32  # the accumulate dtype of every combination
            buf = env.filled(acc, shape[0] * shape[1])
            epi = (PostOpDesc(kind, operand=buf.matrix(acc, *shape)),)
            kw = {}
        if bad:
            buf.free()
        return s.submit(s.gemm(epilogue=epi, **kw))
    return build


def _copy_freed(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)  # buffers 1 to 4; the freed one is the 5th
        dt = env.copy_dtype  # a COPY the device declares
        buf = env.filled(dt, M * N)
        pair = [env.filled(dt, M * N).matrix(dt, M, N) for _ in range(2)]
        mats = {"src": pair[0], "dst": pair[1], role: buf.matrix(dt, M, N)}
        if bad:
            buf.free()
        return s.submit(Copy(**mats), engine="copy")
    return build


def _resubmitted_after_free(role: str) -> Builder:
    """Identical bytes, accepted once (and memoised by a fast transport), submitted again after
    the operand's buffer was freed: the memo must not let them through."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)  # buffers 1 to 4; the freed one is the 5th
        # in dtypes the device declares: the GEMM's own, or a COPY that converts nothing
        dt = env.copy_dtype if role in ("src", "dst") else s.dt if role in ("a", "b") else s.d_dt
        buf = env.filled(dt, M * N if role in ("c", "d", "src", "dst") else M * K)
        mat = buf.matrix(dt, *((M, N) if role in ("c", "d", "src", "dst") else (M, K)))
        if role in ("src", "dst"):
            pair = [env.filled(dt, M * N).matrix(dt, M, N) for _ in range(2)]
            raw = encode_submission([Copy(**{"src": pair[0], "dst": pair[1], role: mat})], Engine.COPY)
        else:
            raw = encode_submission([s.gemm(**{role: mat})])
        for _ in range(2):
            env.dev.submit_raw(raw).wait(timeout_ns=FENCE_WAIT_NS)
        if bad:
            buf.free()
        return s.submit_raw(raw)
    return build


def _foreign(role: str) -> Builder:
    """The operand ``role`` in a buffer of another client (another Device), same contents."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        other = env.open_other()
        for _ in range(7):  # so the foreign handle (8) is not also a handle of this client (1..4)
            env.alloc(8, other)
        old: Matrix = getattr(s, role)
        dt = s.dt if role in ("a", "b") else s.d_dt  # the device's own combination
        dev = other if bad else env.dev
        buf = env.alloc(old.rows * old.cols * dt.itemsize, dev)
        src = getattr(s, role.upper())
        buf.write(src.read(dt, src.size_bytes // dt.itemsize))  # read(): device memory has no NumPy view
        if bad and buf.handle != 8:
            raise RuntimeError(f"case setup: the 8th buffer of a new client got handle {buf.handle}")
        return s.submit(s.gemm(**{role: buf.matrix(dt, old.rows, old.cols)}))
    return build


def _bias_dtype_patch(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    cmd = s.gemm(epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=s.vector(s.d_dt, 1, N)),))
    return s.submit_raw(encode_submission([patch_cmd(cmd, {"epilogue[0].operand.dtype": 42} if bad else None)]))


def _shape(role: str, dim: str, delta: int = 1) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, pad=N + K)
        mat: Matrix = getattr(s, role)
        if bad:
            mat = replace(mat, **{dim: getattr(mat, dim) + delta})
        return s.submit(s.gemm(**{role: mat}))
    return build


_DIMS = {"a": (M, K), "b": (K, N), "c": (M, N), "d": (M, N)}


def _trans_shape(role: str) -> Builder:
    """trans_a / trans_b set, but the operand still stored untransposed (shapes differ: m != k != n)."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        mat: Matrix = getattr(s, role)
        stored = mat if bad else replace(mat, rows=mat.cols, cols=mat.rows, ld_elems=mat.rows)
        return s.submit(s.gemm(**{role: stored, f"trans_{role}": True}))
    return build


def _epi_shape(kind: PostOpKind, good: tuple[int, int], bad_shape: tuple[int, int]) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        shape = bad_shape if bad else good
        return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU), PostOpDesc(kind, operand=s.vector(
            s.d_dt, *shape)))))
    return build


def _copy_shape(dim: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, pad=N + 1)
        dst = replace(s.d, **{dim: getattr(s.d, dim) + 1}) if bad else s.d
        return s.submit(Copy(src=s.c, dst=dst), engine="copy")
    return build


def _ld(role: str, value: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        mat: Matrix = getattr(s, role)
        return s.submit(s.gemm(**{role: replace(mat, ld_elems=value) if bad else mat}))
    return build


def _epi_ld(kind: PostOpKind, shape: tuple[int, int], ld: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        v = s.vector(s.d_dt, *shape)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=replace(v, ld_elems=ld) if bad else v),)))
    return build


def _copy_ld(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        mats = {"src": s.c, "dst": s.d}
        if bad:
            mats[role] = replace(mats[role], ld_elems=N - 1)
        return s.submit(Copy(**mats), engine="copy")
    return build


def _align(role: str, dt: Any = None, good_off: int = 0, bad_off: int = 0,
           dev_limits: dict[str, int] | None = None) -> Builder:
    """Operand ``role`` at ``bad_off`` (the defect) or ``good_off``; without ``dt`` in the device's own
    dtypes, at the offsets its ``limits.alignment_elems`` allows and forbids (:meth:`Env.aligned_bytes`)."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_limits(**dev_limits) if dev_limits else None
        s = ValidGemm(env, dt, pad=64 * env.caps.limits.alignment_elems, dev=dev)
        good, wrong = (good_off, bad_off) if dt is not None else (env.aligned_bytes(role), env.misaligned_bytes(role))
        mat: Matrix = getattr(s, role)
        return s.submit(s.gemm(**{role: replace(mat, offset_bytes=wrong if bad else good)}))
    return build


def _misaligned_seen(role: str) -> Callable[[Env], str]:
    return lambda env: f"got {env.misaligned_bytes(role)}"


def _epi_align(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    good = env.aligned_bytes("bias")
    buf = env.filled(s.d_dt, N + good // s.d_dt.itemsize)
    v = buf.matrix(s.d_dt, 1, N, offset_bytes=env.misaligned_bytes("bias") if bad else good)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=v),)))


def _copy_align(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env, pad=env.caps.limits.alignment_elems)
    good = env.aligned_bytes("c")
    return s.submit(Copy(src=replace(s.c, offset_bytes=env.misaligned_bytes("c") if bad else good), dst=s.d),
                    engine="copy")


def _bounds(role: str) -> Builder:
    """Buffers sized exactly; the defective twin starts the operand one (aligned) step later."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        mat: Matrix = getattr(s, role)
        return s.submit(s.gemm(**{role: replace(mat, offset_bytes=env.aligned_bytes(role) if bad else 0)}))
    return build


def _bounds_seen(role: str, elems: int) -> Callable[[Env], str]:
    """The byte range a one-step-later operand of ``elems`` elements spans."""
    return lambda env: f"bytes [{env.aligned_bytes(role)}, {env.aligned_bytes(role) + elems * env.elem_bytes(role)})"


def _bounds_ld(env: Env, bad: bool) -> Callable[[], Any]:
    # the last row is where the overrun shows: ld one larger runs M - 1 elements past the end
    s = ValidGemm(env, pad=M - 2)
    return s.submit(s.gemm(a=replace(s.a, ld_elems=K + (1 if bad else 0))))


def _bounds_batch(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env, batch=2)
    return s.submit(s.gemm(b=replace(s.b, batch_stride_elems=K * N + (1 if bad else 0))))


def _epi_bounds(kind: PostOpKind, shape: tuple[int, int]) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        v = s.vector(s.d_dt, *shape)
        step = env.aligned_bytes("bias")
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=replace(v, offset_bytes=step if bad else 0)),)))
    return build


def _copy_bounds(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        mats = {"src": s.c, "dst": s.d}
        if bad:
            mats[role] = replace(mats[role], offset_bytes=env.aligned_bytes("c"))
        return s.submit(Copy(**mats), engine="copy")
    return build


def _copy_batch_stride(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        mats = {"src": s.c, "dst": s.d}
        if bad:
            mats[role] = replace(mats[role], batch_stride_elems=M * N)
        return s.submit(Copy(**mats), engine="copy")
    return build


def field_set_to(role: str, field_: str, value: int | Callable[[Env], int], **std: Any) -> Builder:
    """The standard GEMM (sized by ``std``) with operand ``role``'s ``field_`` set to ``value`` (a
    callable: the value for the case's :class:`Env`, e.g. from the device's element sizes)."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, **std)
        mat: Matrix = getattr(s, role)
        v = value(env) if callable(value) else value
        return s.submit(s.gemm(**{role: replace(mat, **{field_: v}) if bad else mat}))
    return build


def _epi_huge_ld(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    v = s.vector(s.d_dt, 1, N)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=replace(v, ld_elems=2**62) if bad else v),)))


def _copy_huge_ld(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env, m=1)
    src = replace(s.c, ld_elems=2**63 - 1) if bad else s.c
    return s.submit(Copy(src=src, dst=s.d), engine="copy")


def third_command_invalid(kind: str) -> Builder:
    """Two valid GEMMs (each writing a D of its own), then a third command with one defect."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        _, d1 = s.operand(s.d_dt, M, N)
        _, d2 = s.operand(s.d_dt, M, N)
        first, second = s.gemm(d=d1), s.gemm(d=d2)
        if kind == "ld":
            third: Gemm | bytes = s.gemm(a=replace(s.a, ld_elems=K - 1) if bad else s.a)
        else:
            third = patch_cmd(s.gemm(), {"c.reserved": JUNK} if bad else None)
        return s.submit(first, second, third)
    return build


def register(cat: Catalogue) -> None:
    """Add the ``operand`` cases to ``cat``."""
    for role in ("a", "b", "d"):
        cat.case("operand.present", f"{role}.handle", "got 0", f"gemm-{role}-absent", _absent(role))
    cat.case("operand.present", "c.handle", "got 0", "gemm-c-absent-beta-nonzero", _c_absent_beta)
    for kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
        cat.case("operand.present", "epilogue[0].operand.handle", "got 0", f"{kind.name.lower()}-without-operand",
                 _epi_absent(kind))
    for role in ("src", "dst"):
        cat.copy_patch_case("operand.present", f"{role}.handle", "got 0", f"copy-{role}-absent", {f"{role}.handle": 0})
    for key, v in (("dtype", 2), ("offset_bytes", 4), ("rows", 3), ("cols", 4), ("ld_elems", 4),
                   ("batch_stride_elems", 12)):
        cat.gemm_patch_case("operand.absent_zero", "c", f"c.{key} = {v}", f"c-{key}", {f"c.{key}": v},
                            c=None, beta=0.0)
        cat.gemm_patch_case("operand.absent_zero", "epilogue[0].operand", f"epilogue[0].operand.{key} = {v}",
                            f"relu-operand-{key}", {f"epilogue[0].operand.{key}": v},
                            epilogue=(PostOpDesc(PostOpKind.RELU),))
    for role, param in (("a", "a"), ("b", "b"), ("c", "c"), ("d", "d"), ("bias", "epilogue[0].operand"),
                        ("add", "epilogue[0].operand")):
        # handles are numbered from 1 per client: this one is the 5th buffer of the device
        cat.case("operand.handle", f"{param}.handle", "got 5", f"freed-{role}", _freed(role))
    for role in ("src", "dst"):
        cat.case("operand.handle", f"{role}.handle", "got 5", f"copy-freed-{role}", _copy_freed(role))
    for role in ("a", "d", "src"):
        cat.case("operand.handle", f"{role}.handle", "got 5", f"resubmitted-after-free-{role}",
                 _resubmitted_after_free(role))
    for role in ("a", "d"):
        cat.case("operand.handle", f"{role}.handle", "got 8", f"{role}-of-another-client", _foreign(role))
    cat.gemm_patch_case("operand.handle", "b.handle", "got 999", "b-never-allocated", {"b.handle": 999})
    for role, v in (("a", 99), ("b", 0), ("d", 8), ("d", JUNK)):
        cat.gemm_patch_case("operand.dtype", f"{role}.dtype", f"got {v}", f"{role}-dtype-{v}", {f"{role}.dtype": v})
    for role in ("src", "dst"):
        cat.copy_patch_case("operand.dtype", f"{role}.dtype", "got 99", f"copy-{role}-dtype-99", {f"{role}.dtype": 99})
    cat.case("operand.dtype", "epilogue[0].operand.dtype", "got 42", "bias-dtype-42", _bias_dtype_patch)
    for role, (rows, cols) in _DIMS.items():
        cat.case("operand.shape", f"{role}.rows", f"got {rows + 1}", f"{role}-rows", _shape(role, "rows"))
        cat.case("operand.shape", f"{role}.cols", f"got {cols + 1}", f"{role}-cols", _shape(role, "cols"))
    cat.case("operand.shape", "a.rows", f"got {M}", "trans_a-untransposed", _trans_shape("a"))
    cat.case("operand.shape", "b.rows", f"got {K}", "trans_b-untransposed", _trans_shape("b"))
    cat.case("operand.shape", "epilogue[1].operand.cols", f"got {N + 1}", "bias_n-too-long",
             _epi_shape(PostOpKind.BIAS_N, (1, N), (1, N + 1)))
    cat.case("operand.shape", "epilogue[1].operand.rows", f"got {N}", "bias_n-as-column",
             _epi_shape(PostOpKind.BIAS_N, (1, N), (N, 1)))
    cat.case("operand.shape", "epilogue[1].operand.rows", "got 1", "bias_m-as-row",
             _epi_shape(PostOpKind.BIAS_M, (M, 1), (1, M)))
    cat.case("operand.shape", "epilogue[1].operand.rows", f"got {M + 1}", "add-too-tall",
             _epi_shape(PostOpKind.ADD, (M, N), (M + 1, N)))
    cat.case("operand.shape", "dst.rows", f"got {M + 1}", "copy-dst-rows", _copy_shape("rows"))
    cat.case("operand.shape", "dst.cols", f"got {N + 1}", "copy-dst-cols", _copy_shape("cols"))
    for role, (rows, cols) in _DIMS.items():
        cat.case("operand.ld", f"{role}.ld_elems", f"got {cols - 1}", f"{role}-ld-cols-minus-1", _ld(role, cols - 1))
    cat.case("operand.ld", "a.ld_elems", "got 0", "a-ld-0", _ld("a", 0))
    cat.case("operand.ld", "epilogue[0].operand.ld_elems", "got 0", "bias_m-ld-0",
             _epi_ld(PostOpKind.BIAS_M, (M, 1), 0))
    cat.case("operand.ld", "epilogue[0].operand.ld_elems", f"got {N - 1}", "add-ld-short",
             _epi_ld(PostOpKind.ADD, (M, N), N - 1))
    for role in ("src", "dst"):
        cat.case("operand.ld", f"{role}.ld_elems", f"got {N - 1}", f"copy-{role}-ld", _copy_ld(role))
    for role in ("a", "b", "c", "d"):  # the device's own dtypes, at the alignment it declares
        cat.case("operand.alignment", f"{role}.offset_bytes", _misaligned_seen(role), f"{role}-misaligned",
                 _align(role))
    cat.case("operand.alignment", "a.offset_bytes", "got 4", "a-f64-offset-4", _align("a", np.float64, 8, 4))
    cat.case("operand.alignment", "b.offset_bytes", "got 1", "b-bf16-offset-1", _align("b", BF16, 2, 1))
    cat.case("operand.alignment", "a.offset_bytes", "got 4", "a-f32-device-alignment-4-elems",
             _align("a", np.float32, 16, 4, {"alignment_elems": 4}), portable=False)
    cat.case("operand.alignment", "a.offset_bytes", "got 2", "a-int8-device-alignment-4-elems",
             _align("a", np.int8, 4, 2, {"alignment_elems": 4}), portable=False)
    cat.case("operand.alignment", "epilogue[0].operand.offset_bytes", _misaligned_seen("bias"), "bias-misaligned",
             _epi_align)
    cat.case("operand.alignment", "src.offset_bytes", _misaligned_seen("c"), "copy-src-misaligned", _copy_align)
    for role, (rows, cols) in _DIMS.items():
        cat.case("operand.bounds", role, _bounds_seen(role, rows * cols), f"{role}-one-element-past", _bounds(role))
    cat.case("operand.bounds", "a", lambda env: f"bytes [0, {((M - 1) * (K + 1) + K) * env.elem_bytes('a')})",
             "a-ld-one-larger", _bounds_ld)
    cat.case("operand.bounds", "b", lambda env: f"bytes [0, {(2 * K * N + 1) * env.elem_bytes('b')})",
             "b-batch-stride-one-larger", _bounds_batch)
    cat.case("operand.bounds", "epilogue[0].operand", _bounds_seen("bias", N), "bias-one-element-past",
             _epi_bounds(PostOpKind.BIAS_N, (1, N)))
    cat.case("operand.bounds", "epilogue[0].operand", _bounds_seen("add", M * N), "add-one-element-past",
             _epi_bounds(PostOpKind.ADD, (M, N)))
    for role in ("src", "dst"):
        cat.case("operand.bounds", role, _bounds_seen("c", M * N), f"copy-{role}-one-element-past",
                 _copy_bounds(role))
    for role in ("src", "dst"):
        cat.case("operand.batch_stride", f"{role}.batch_stride_elems", f"got {M * N}", f"copy-{role}",
                 _copy_batch_stride(role))
    cat.case("operand.ld", "a.ld_elems", f"got {2**62}", "a-ld-2**62-one-row",
             field_set_to("a", "ld_elems", 2**62, m=1))
    cat.case("operand.ld", "d.ld_elems", f"got {2**64 - 1}", "d-ld-u64-max-one-row",
             field_set_to("d", "ld_elems", 2**64 - 1, m=1))
    past_max = lambda env: 2**48 // env.elem_bytes("b") + 1  # noqa: E731 - one row of B ends past 2**48 bytes
    cat.case("operand.ld", "b.ld_elems", lambda env: f"got {past_max(env)}", "b-ld-past-max-buffer-bytes-one-row",
             field_set_to("b", "ld_elems", past_max, k=1))
    cat.case("operand.batch_stride", "a.batch_stride_elems", f"got {2**63 - 1}", "a-2**63-1-batch-1",
             field_set_to("a", "batch_stride_elems", 2**63 - 1))
    cat.case("operand.batch_stride", "c.batch_stride_elems", f"got {2**64 - 1}", "c-u64-max-batch-1",
             field_set_to("c", "batch_stride_elems", 2**64 - 1))
    top = lambda env: 2**64 - env.aligned_bytes("a")  # noqa: E731 - the last aligned offset a u64 holds
    cat.case("operand.bounds", "a", lambda env: f"bytes [{top(env)}, {top(env) + env.elem_bytes('a') * M * K})",
             "a-offset-u64-max", field_set_to("a", "offset_bytes", top))
    cat.case("operand.bounds", "b", lambda env: f"bytes [0, {env.elem_bytes('b') * (2**46 + K * N)})",
             "b-largest-batch-stride-batch-2", field_set_to("b", "batch_stride_elems", 2**46, batch=2))
    cat.case("operand.ld", "epilogue[0].operand.ld_elems", f"got {2**62}", "bias-ld-2**62", _epi_huge_ld)
    cat.case("operand.ld", "src.ld_elems", f"got {2**63 - 1}", "copy-src-ld-2**63-1-one-row", _copy_huge_ld)
    cat.case("operand.ld", "a.ld_elems", f"got {K - 1}", "third-of-three", third_command_invalid("ld"), command_index=2)
