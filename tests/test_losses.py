"""Losses against numpy written out by hand on 2x3 / 3x3 inputs."""

import math

import numpy as np
import paddle
import pytest

from offline_ssld.errors import ConfigError
from offline_ssld.losses import (
    LOSSES,
    DistillLoss,
    build_loss,
    ce_soft_loss,
    dkd_loss,
    dml_loss,
    gt_ce_loss,
    js_loss,
    kl_loss,
    needs_dense_target,
)

LOGITS = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], dtype=np.float32)
# row 1 has an exact zero, as a "sampled" or top-k cache can produce
TEACHER = np.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], dtype=np.float32)
EPS = 1e-12


def T(x, dtype="float32"):
    return paddle.to_tensor(np.asarray(x), dtype=dtype)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def xlogy(x, y):
    """x * log(y) with 0 * log(0) = 0."""
    out = np.zeros_like(x, dtype=np.float64)
    pos = x > 0
    out[pos] = x[pos] * np.log(y[pos])
    return out


def val(t):
    return float(t.numpy())


# ----------------------------------------------------------------------------- DML


def test_dml_is_symmetric_kl_with_eps():
    s, t = softmax(LOGITS), TEACHER.astype(np.float64)
    kl_ts = (t * np.log((t + EPS) / (s + EPS))).sum(axis=1)
    kl_st = (s * np.log((s + EPS) / (t + EPS))).sum(axis=1)
    expected = ((kl_ts + kl_st) / 2).mean()
    assert val(dml_loss(T(LOGITS), T(TEACHER))) == pytest.approx(expected, rel=1e-5)
    # PaddleClas form: mean over all B*C elements times class_num
    elem = (t * np.log((t + EPS) / (s + EPS)) + s * np.log((s + EPS) / (t + EPS))) / 2
    assert expected == pytest.approx(elem.mean() * 3, rel=1e-12)


def test_dml_of_identical_distributions_is_zero():
    probs = softmax(LOGITS).astype(np.float32)
    assert abs(val(dml_loss(T(LOGITS), T(probs)))) < 1e-6


# ----------------------------------------------------------------------------- JS


def test_js_is_mixture_form_and_zero_safe():
    s, t = softmax(LOGITS), TEACHER.astype(np.float64)
    m = (s + t) / 2
    kl_sm = (xlogy(s, s) - xlogy(s, m)).sum(axis=1)
    kl_tm = (xlogy(t, t) - xlogy(t, m)).sum(axis=1)  # zero class contributes 0
    expected = ((kl_sm + kl_tm) / 2).mean()
    assert val(js_loss(T(LOGITS), T(TEACHER))) == pytest.approx(expected, rel=1e-5)


def test_js_bounded_by_ln2_and_symmetric():
    # disjoint supports: the student puts ~all mass on class 0, the teacher on class 2
    disjoint = js_loss(T([[50.0, -50.0, -50.0]]), T([[0.0, 0.0, 1.0]]))
    assert val(disjoint) == pytest.approx(math.log(2), rel=1e-5)
    assert val(js_loss(T(LOGITS), T(TEACHER))) <= math.log(2)
    p = np.array([[0.1, 0.6, 0.3]])
    q = np.array([[0.4, 0.4, 0.2]])
    a = js_loss(T(np.log(p)), T(q))
    b = js_loss(T(np.log(q)), T(p))
    assert val(a) == pytest.approx(val(b), rel=1e-5)


# ----------------------------------------------------------------------------- KL


def test_kl_t1_against_one_hot_equals_ce():
    one_hot = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    labels = T([2, 0], "int64")
    kl = val(kl_loss(T(LOGITS), T(one_hot), temperature=1.0))
    assert kl == pytest.approx(val(gt_ce_loss(T(LOGITS), labels)), rel=1e-6)
    # by hand: uniform logits vs a one-hot target cost ln 3
    assert val(kl_loss(T([[0.0, 0.0, 0.0]]), T([[0.0, 1.0, 0.0]]), 1.0)) == pytest.approx(
        math.log(3), rel=1e-6
    )


def test_kl_tempers_teacher_probs_like_teacher_logits():
    teacher_logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    probs = softmax(teacher_logits).astype(np.float32)
    temp = 4.0
    t_t, s_t = softmax(teacher_logits / temp), softmax(LOGITS / temp)
    raw_kl = (t_t * np.log(t_t / s_t)).sum(axis=1).mean()
    got = val(kl_loss(T(LOGITS), T(probs), temperature=temp))
    assert got == pytest.approx(raw_kl * temp**2, rel=1e-4)  # the T^2 factor
    assert got / temp**2 == pytest.approx(raw_kl, rel=1e-4)


def test_kl_with_zero_in_teacher_matches_formula():
    temp = 2.0
    t_t = TEACHER.astype(np.float64) ** (1 / temp)
    t_t /= t_t.sum(axis=1, keepdims=True)  # [0.5, 0.5, 0] stays [0.5, 0.5, 0]
    s_t = softmax(LOGITS / temp)
    expected = (xlogy(t_t, t_t) - xlogy(t_t, s_t)).sum(axis=1).mean() * temp**2
    assert val(kl_loss(T(LOGITS), T(TEACHER), temp)) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- CE


def test_ce_soft_by_hand():
    # uniform student: -sum t log(1/3) = ln 3 whatever t is
    assert val(ce_soft_loss(T([[0.0, 0.0, 0.0]]), T([[0.2, 0.3, 0.5]]))) == pytest.approx(
        math.log(3), rel=1e-6
    )
    expected = -(TEACHER * np.log(softmax(LOGITS))).sum(axis=1).mean()
    assert val(ce_soft_loss(T(LOGITS), T(TEACHER))) == pytest.approx(expected, rel=1e-5)


def test_gt_ce_ignores_unlabeled_rows():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    ls = np.log(softmax(logits))
    expected = -(ls[0, 2] + ls[2, 1]) / 2  # row 1 is unlabeled
    got = gt_ce_loss(T(logits), T([2, -1, 1], "int64"))
    assert val(got) == pytest.approx(expected, rel=1e-6)
    # [B, 1] labels are accepted too
    got2 = gt_ce_loss(T(logits), T([[2], [-1], [1]], "int64"))
    assert val(got2) == pytest.approx(expected, rel=1e-6)


def test_gt_ce_with_no_labels_is_zero_not_nan():
    x = T(LOGITS)
    x.stop_gradient = False
    loss = gt_ce_loss(x, T([-1, -1], "int64"))
    assert val(loss) == 0.0
    loss.backward()
    assert np.all(np.isfinite(x.grad.numpy()))


# ----------------------------------------------------------------------------- DKD


def np_dkd_paddleclas(ls, lt, target, temp, alpha, beta):
    """PaddleClas DKDLoss from teacher logits, in numpy (divides by the batch size)."""
    b = ls.shape[0]
    gt = np.zeros_like(ls)
    gt[np.arange(b), target] = 1.0
    ps, pt = softmax(ls / temp), softmax(lt / temp)
    bs = np.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], axis=1)
    bt = np.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], axis=1)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum() * temp**2 / b
    pt2 = softmax(lt / temp - 1000.0 * gt)
    log_ps2 = log_softmax(ls / temp - 1000.0 * gt)
    nckd = (xlogy(pt2, pt2) - pt2 * log_ps2).sum() * temp**2 / b
    return alpha * tckd + beta * nckd


DKD_S = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [2.0, 0.0, 1.0]], dtype=np.float32)
DKD_T = np.array([[0.0, 1.0, 4.0], [1.0, -2.0, 0.5], [0.0, 2.0, 1.0]])


@pytest.mark.parametrize("temp,alpha,beta", [(1.0, 1.0, 1.0), (2.0, 0.5, 8.0)])
def test_dkd_matches_numpy_reimplementation(temp, alpha, beta):
    target = np.array([2, 0, 1])
    expected = np_dkd_paddleclas(DKD_S, DKD_T, target, temp, alpha, beta)
    probs = softmax(DKD_T).astype(np.float32)  # teacher logits are gone offline
    got = dkd_loss(T(DKD_S), T(probs), T(target, "int64"), temp, alpha, beta)
    assert val(got) == pytest.approx(expected, rel=1e-4)


def test_dkd_excludes_unlabeled_rows_and_handles_none():
    probs = softmax(DKD_T).astype(np.float32)
    labels = T([2, -1, 1], "int64")
    expected = np_dkd_paddleclas(DKD_S[[0, 2]], DKD_T[[0, 2]], np.array([2, 1]), 2.0, 1.0, 1.0)
    got = dkd_loss(T(DKD_S), T(probs), labels, temperature=2.0)
    assert val(got) == pytest.approx(expected, rel=1e-4)
    assert val(dkd_loss(T(DKD_S), T(probs), T([-1, -1, -1], "int64"))) == 0.0


def test_dkd_one_hot_teacher_is_finite():
    # teacher all on the gt class: non-target distribution is undefined -> NCKD = 0
    one_hot = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    x = T(LOGITS)
    x.stop_gradient = False
    loss = dkd_loss(x, T(one_hot), T([2, 0], "int64"), temperature=2.0)
    # only TCKD remains: T^2 * mean(-log p_s,T(gt))
    ps = softmax(LOGITS / 2.0)
    expected = 4.0 * -(np.log(ps[0, 2]) + np.log(ps[1, 0])) / 2
    assert val(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert np.all(np.isfinite(x.grad.numpy()))


# ----------------------------------------------------------------------------- zeros, grads


@pytest.mark.parametrize(
    "fn",
    [
        ce_soft_loss,
        js_loss,
        dml_loss,
        lambda s, t: kl_loss(s, t, 4.0),
        lambda s, t: kl_loss(s, t, 1.0),
        lambda s, t: dkd_loss(s, t, T([0, 2], "int64"), 2.0),
        lambda s, t: gt_ce_loss(s, T([0, -1], "int64")),
    ],
)
def test_finite_with_zero_targets_and_gradients_flow(fn):
    sparse = np.array([[0.0, 0.0, 1.0], [0.25, 0.0, 0.75]], dtype=np.float32)
    x = T(LOGITS)
    x.stop_gradient = False
    loss = fn(x, T(sparse))
    assert np.isfinite(val(loss))
    loss.backward()
    grad = x.grad.numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


# ----------------------------------------------------------------------------- build_loss


def test_build_loss_maps_names():
    cases = {
        "DistillationDMLLoss": "dml",
        "DMLLoss": "dml",
        "DistillationJSLoss": "js",
        "JSLoss": "js",
        "DistillationCELoss": "ce_soft",
        "DistillationGTCELoss": "gt_ce",
        "CELoss": "gt_ce",
        "DistillationKLDivLoss": "kl",
        "KLDivLoss": "kl",
        "DistillationDKDLoss": "dkd",
        "DKDLoss": "dkd",
    }
    for name, kind in cases.items():
        loss = build_loss([{name: {"weight": 1.0}}])
        assert loss.terms[0][0] == kind, name
    kl = build_loss([{"DistillationKLDivLoss": {"weight": 1.0, "temperature": 2}}])
    assert kl.terms == [("kl", 1.0, {"temperature": 2.0})]
    dkd = build_loss([{"DKDLoss": {"weight": 1.0, "beta": 8.0}}])
    assert dkd.terms == [("dkd", 1.0, {"temperature": 1.0, "alpha": 1.0, "beta": 8.0})]
    assert build_loss([{"CELoss": None}]).terms == [("gt_ce", 1.0, {})]


def test_build_loss_weights_multiply_and_harmless_args():
    cfg = [
        {
            "DistillationDMLLoss": {
                "weight": 2.0,
                "model_name_pairs": [["Student", "Teacher"]],
                "key": None,
                "name": "dml",
                "act": "softmax",
            }
        },
        {"DistillationKLDivLoss": {"weight": 0.5, "temperature": 4, "model_name_pairs": []}},
        {"DistillationGTCELoss": {"weight": 0.25, "model_names": ["Student"]}},
    ]
    loss = build_loss(cfg)
    s, t, y = T(LOGITS), T(TEACHER), T([1, -1], "int64")
    total, logs = loss(s, t, y)
    expected = (
        2.0 * val(dml_loss(s, t)) + 0.5 * val(kl_loss(s, t, 4.0)) + 0.25 * val(gt_ce_loss(s, y))
    )
    assert val(total) == pytest.approx(expected, rel=1e-6)
    assert set(logs) == {"dml", "kl", "gt_ce"}
    assert logs["dml"] == pytest.approx(val(dml_loss(s, t)), rel=1e-6)


def test_build_loss_repeated_kind_gets_distinct_log_names():
    loss = build_loss([{"KLDivLoss": {"weight": 1.0}}, {"KLDivLoss": {"temperature": 1}}])
    _, logs = loss(T(LOGITS), T(TEACHER), T([0, 1], "int64"))
    assert set(logs) == {"kl_0", "kl_1"}


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ([{"DistillationDMLLoss": {}}, {"FocalLoss": {}}], "Loss.Train.1"),
        ([{"AFDLoss": {"weight": 1.0}}], "Loss.Train.0.AFDLoss"),
        ([{"DMLLoss": {}}, {"DistillationDistanceLoss": {}}], "Loss.Train.1"),
        ([{"DistillationDMLLoss": {"use_log": True}}], "Loss.Train.0.DistillationDMLLoss.use_log"),
        ([{"CELoss": {"epsilon": 0.1}}], "Loss.Train.0.CELoss.epsilon"),
        ([{"DMLLoss": {"key": "logits"}}], "Loss.Train.0.DMLLoss.key"),
        ([{"DMLLoss": {"act": "sigmoid"}}], "Loss.Train.0.DMLLoss.act"),
        ([{"KLDivLoss": {"temperature": "hot"}}], "Loss.Train.0.KLDivLoss.temperature"),
        ([{"KLDivLoss": {"temperature": 0}}], "Loss.Train.0.KLDivLoss.temperature"),
        ([{"DMLLoss": {"weight": -1}}], "Loss.Train.0.DMLLoss.weight"),
        ([{"DMLLoss": {}, "KLDivLoss": {}}], "Loss.Train.0"),
        ([{"DMLLoss": {}}, {"GTFusion": {"alpha": 1.5}}], "Loss.Train.1.GTFusion.alpha"),
        ([{"DMLLoss": {}}, {"GTFusion": {"beta": 0.5}}], "Loss.Train.1.GTFusion.beta"),
        ([{"GTFusion": {"alpha": 0.5}}], "Loss.Train"),
        ([], "Loss.Train"),
    ],
)
def test_build_loss_errors_name_the_key(cfg, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_loss(cfg)


def test_unknown_and_feature_loss_messages():
    with pytest.raises(ConfigError, match="DistillationDMLLoss") as e:
        build_loss([{"FocalLoss": {}}], key="Arch.Loss")
    assert "Arch.Loss.0" in str(e.value)
    with pytest.raises(ConfigError, match="logit") as e:
        build_loss([{"MGDLoss": {}}])
    assert "Loss.Train.0" in str(e.value)


# ----------------------------------------------------------------------------- GT fusion


def test_gt_fusion_per_row():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    teacher = np.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8]], dtype=np.float32)
    labels = np.array([1, -1, 0])
    alpha = 0.7
    s, t = softmax(logits), teacher.astype(np.float64)
    kd = (t * np.log((t + EPS) / (s + EPS)) + s * np.log((s + EPS) / (t + EPS))).sum(1) / 2
    kd = 2.0 * kd  # weight 2
    ce = -np.log(s[[0, 2], [1, 0]])
    rows = [alpha * kd[0] + (1 - alpha) * ce[0], kd[1], alpha * kd[2] + (1 - alpha) * ce[1]]
    expected = np.mean(rows)  # the unlabeled row keeps the full KD term

    loss = build_loss([{"DistillationDMLLoss": {"weight": 2.0}}, {"GTFusion": {"alpha": alpha}}])
    assert loss.gt_alpha == alpha
    x = T(logits)
    x.stop_gradient = False
    total, logs = loss(x, T(teacher), T(labels, "int64"))
    assert val(total) == pytest.approx(expected, rel=1e-5)
    assert logs["gt_fusion_ce"] == pytest.approx(ce.mean(), rel=1e-5)
    assert logs["kd"] == pytest.approx(kd.mean(), rel=1e-5)
    total.backward()
    assert np.abs(x.grad.numpy()).sum() > 0

    # every row labeled: exactly alpha * KD + (1 - alpha) * CE
    all_lab = T([1, 2, 0], "int64")
    total2, _ = loss(T(logits), T(teacher), all_lab)
    kd_mean = 2.0 * val(dml_loss(T(logits), T(teacher)))
    ce_mean = val(gt_ce_loss(T(logits), all_lab))
    assert val(total2) == pytest.approx(alpha * kd_mean + (1 - alpha) * ce_mean, rel=1e-5)
    # nothing labeled: just KD
    total3, _ = loss(T(logits), T(teacher), T([-1, -1, -1], "int64"))
    assert val(total3) == pytest.approx(kd_mean, rel=1e-5)


def test_gt_fusion_alpha_one_keeps_label_dependent_terms_consistent():
    # DKD averages over labeled rows; fused rows are rescaled so alpha=1 changes nothing
    probs = softmax(DKD_T).astype(np.float32)
    labels = T([2, -1, 1], "int64")
    terms = [("dkd", 1.5, {"temperature": 2.0}), ("kl", 0.5, {"temperature": 4.0})]
    plain, _ = DistillLoss(terms)(T(DKD_S), T(probs), labels)
    fused, _ = DistillLoss(terms, gt_alpha=1.0)(T(DKD_S), T(probs), labels)
    assert val(fused) == pytest.approx(val(plain), rel=1e-5)


def test_distill_loss_rejects_bad_terms():
    with pytest.raises(ConfigError):
        DistillLoss([("mse", 1.0, {})])
    with pytest.raises(ConfigError):
        DistillLoss([("dml", 1.0, {"temperature": 2.0})])
    with pytest.raises(ConfigError):
        DistillLoss([])
    with pytest.raises(ConfigError):
        DistillLoss([("dml", 1.0, {})], gt_alpha=-0.1)


def test_needs_dense_target():
    assert needs_dense_target(build_loss([{"DistillationDMLLoss": {}}]))
    assert needs_dense_target(build_loss([{"CELoss": {}}, {"JSLoss": {}}]))
    assert not needs_dense_target(build_loss([{"DistillationCELoss": {}}, {"CELoss": {}}]))
    assert not needs_dense_target(build_loss([{"KLDivLoss": {"temperature": 1}}]))
    # tempering t ** (1/T) and DKD's renormalised non-target part are non-linear in t
    assert needs_dense_target(build_loss([{"KLDivLoss": {"temperature": 4}}]))
    assert needs_dense_target(build_loss([{"DKDLoss": {}}]))


@pytest.mark.parametrize(
    ("target", "entry", "status"),
    [
        ("exact", {"DistillationKLDivLoss": {"temperature": 4}}, "exact"),
        ("topk", {"DistillationDMLLoss": {}}, "buckets"),
        ("topk", {"DistillationKLDivLoss": {"temperature": 1}}, "buckets"),
        ("topk", {"DistillationJSLoss": {}}, "buckets"),
        ("topk", {"DistillationDKDLoss": {}}, "approximate"),
        ("spread", {"DistillationDMLLoss": {}}, "approximate"),
        ("spread", {"DistillationKLDivLoss": {"temperature": 4}}, "refused"),
        ("topk", {"DistillationKLDivLoss": {"temperature": 4}}, "refused"),
        ("topk", {"DistillationDKDLoss": {"temperature": 2}}, "refused"),
        ("topk", {"CELoss": {}}, "exact"),
        ("sampled", {"DistillationCELoss": {}}, "unbiased"),
        ("sampled", {"DistillationKLDivLoss": {"temperature": 1}}, "unbiased"),
        ("sampled", {"DistillationJSLoss": {}}, "refused"),
        ("sampled", {"DistillationDKDLoss": {}}, "refused"),
    ],
)
def test_pairing_of_codec_target_and_loss(target, entry, status):
    from offline_ssld.losses import pairing

    ((kind, _, kwargs),) = build_loss([entry]).terms
    assert pairing(target, kind, kwargs)[0] == status


def test_check_pairing_names_loss_codec_and_remedy():
    from offline_ssld.errors import ConfigError
    from offline_ssld.losses import check_pairing

    loss = build_loss([{"CELoss": {}}, {"DistillationKLDivLoss": {"temperature": 4}}])
    with pytest.raises(ConfigError, match=r"Loss.Train.1: DistillationKLDivLoss.*'topk'.*fp16.*1"):
        check_pairing("topk", "topk", loss, "Loss.Train")
    check_pairing("fp16", "exact", loss, "Loss.Train")  # accepted


def _reference(name: str, s, z_t, labels, **kw):
    """PaddleClas's DIST/SKD/WSL forward on teacher LOGITS, restated from ppcls/loss
    (dist_loss.py, skdloss.py, wslloss.py; the paddleclas wheel does not ship ppcls.loss)."""
    import paddle.nn.functional as F

    if name == "dist":

        def pearson(a, b):
            a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
            return (a * b).sum(1) / (a.norm(axis=1) * b.norm(axis=1) + 1e-8)

        y_s, y_t = F.softmax(s, axis=-1), F.softmax(z_t, axis=-1)
        inter = 1 - pearson(y_s, y_t).mean()
        intra = 1 - pearson(y_s.transpose([1, 0]), y_t.transpose([1, 0])).mean()
        return kw["beta"] * inter + kw["gamma"] * intra
    one_hot = F.one_hot(labels, num_classes=s.shape[1])
    temp = kw["temperature"]
    if name == "skd":
        m = kw["multiplier"]
        ls = F.layer_norm(s, s.shape[1:], weight=None, bias=None, epsilon=1e-7) * m
        lt = F.layer_norm(z_t, z_t.shape[1:], weight=None, bias=None, epsilon=1e-7) * m
        kd = -paddle.sum(F.softmax(lt / temp) * F.log_softmax(ls / temp), axis=1)
        ce = paddle.mean(-paddle.sum(one_hot * F.log_softmax(ls), axis=1))
        return paddle.mean(kd) * temp**2 * kw["alpha"] + ce * (1 - kw["alpha"])
    ce_s = -paddle.sum(one_hot * F.log_softmax(s.detach()), axis=1)
    ce_t = -paddle.sum(one_hot * F.log_softmax(z_t.detach()), axis=1)
    ratio = paddle.maximum(ce_s / (ce_t + 1e-7), paddle.zeros_like(ce_s))
    kd = -paddle.sum(F.softmax(z_t / temp) * F.log_softmax(s / temp), axis=1)
    return temp**2 * paddle.mean(kd * (1 - paddle.exp(-ratio)))


@pytest.mark.parametrize(
    ("entry", "name", "kwargs"),
    [
        (
            {"DistillationDISTLoss": {"beta": 1.5, "gamma": 0.5}},
            "dist",
            {"beta": 1.5, "gamma": 0.5},
        ),
        (
            {"DistillationSKDLoss": {"temperature": 2.0, "multiplier": 2.0, "alpha": 0.9}},
            "skd",
            {"temperature": 2.0, "multiplier": 2.0, "alpha": 0.9},
        ),
        ({"DistillationWSLLoss": {"temperature": 2.0}}, "wsl", {"temperature": 2.0}),
    ],
)
def test_logit_losses_match_paddleclas_from_probabilities(entry, name, kwargs):
    """Our losses see the teacher's probabilities, PaddleClas's see its logits: on the same
    teacher the values agree, and so do the student's gradients."""
    rng = np.random.default_rng(3)
    student = rng.normal(size=(6, 5)).astype("float32") * 2
    teacher = rng.normal(size=(6, 5)).astype("float32") * 3
    labels = rng.integers(0, 5, size=6).astype("int64")
    probs = np.exp(teacher - teacher.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ours_in = paddle.to_tensor(student, stop_gradient=False)
    ours, _ = build_loss([entry])(ours_in, T(probs), T(labels, "int64"))
    ours.backward()
    theirs_in = paddle.to_tensor(student, stop_gradient=False)
    value = _reference(name, theirs_in, T(teacher), T(labels, "int64"), **kwargs)
    value.backward()
    assert val(ours) == pytest.approx(float(value), rel=1e-4)
    np.testing.assert_allclose(ours_in.grad.numpy(), theirs_in.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_unlabeled_rows_take_the_teachers_argmax_in_skd_and_wsl():
    """PaddleClas's target=None path: with every row unlabeled the hard target is the
    teacher's argmax, as if those labels had been given."""
    rng = np.random.default_rng(4)
    student = T(rng.normal(size=(4, 3)).astype("float32"))
    probs = rng.dirichlet(np.ones(3), size=4).astype("float32")
    argmax = probs.argmax(1).astype("int64")
    for entry in ({"DistillationSKDLoss": {}}, {"DistillationWSLLoss": {}}):
        loss = build_loss([entry])
        unlabeled, _ = loss(student, T(probs), T([-1] * 4, "int64"))
        labeled, _ = loss(student, T(probs), T(argmax, "int64"))
        assert val(unlabeled) == pytest.approx(val(labeled), rel=1e-6)


def test_gt_fusion_refuses_batch_coupled_loss():
    from offline_ssld.errors import ConfigError

    with pytest.raises(ConfigError, match="couples the rows"):
        build_loss([{"DistillationDISTLoss": {}}, {"GTFusion": {"alpha": 0.5}}])


def _bucket_reference(kind: str, z: np.ndarray, t_stored: np.ndarray, rest: float) -> float:
    """The loss over k + 1 buckets computed directly in numpy (float64)."""
    s = np.exp(z - z.max())
    s /= s.sum()
    stored = t_stored > 0
    sb = np.append(s[stored], s[~stored].sum())
    tb = np.append(t_stored[stored], rest)
    if kind == "dml":
        ls, lt = np.log(sb + 1e-12), np.log(tb + 1e-12)
        return float(((tb * (lt - ls)).sum() + (sb * (ls - lt)).sum()) / 2)
    if kind == "ce_soft":
        return float(-(tb * np.log(sb)).sum())
    m = (sb + tb) / 2
    return float(((sb * np.log(sb / m)).sum() + (tb * np.log(tb / m)).sum()) / 2)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("DistillationDMLLoss", "dml"), ("DistillationCELoss", "ce_soft"), ("JSLoss", "js")],
)
def test_topk_target_is_scored_on_k_plus_one_buckets(name, kind):
    """A (C + 1)-column top-k target: the loss equals the k + 1 bucket loss computed in
    numpy, whatever the student does inside its rest bucket."""
    from offline_ssld.cache.codecs import build_codec

    rng = np.random.default_rng(0)
    C, k = 10, 3
    teacher = rng.normal(0, 3, (4, C))
    target = build_codec("topk", C, k=k).decode_target(build_codec("topk", C, k=k).encode(teacher))
    assert target.shape == (4, C + 1)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, rtol=1e-5)
    loss = build_loss([{name: {}}])
    z = rng.normal(0, 2, (4, C)).astype(np.float32)
    got, _ = loss(paddle.to_tensor(z), paddle.to_tensor(target), paddle.full([4], -1, "int64"))
    want = np.mean(
        [
            _bucket_reference(kind, z[r].astype(np.float64), target[r, :C], target[r, C])
            for r in range(4)
        ]
    )
    assert float(got) == pytest.approx(want, rel=1e-4, abs=1e-6)
    # moving the student's mass between two unstored classes leaves the loss unchanged
    z2 = z.copy()
    for r in range(4):
        a, b = np.flatnonzero(target[r, :C] == 0)[:2]
        hi = np.logaddexp(z2[r, a], z2[r, b])
        z2[r, a], z2[r, b] = hi - np.log(1 / 0.05), hi - np.log(1 / 0.95)
    again, _ = loss(paddle.to_tensor(z2), paddle.to_tensor(target), paddle.full([4], -1, "int64"))
    assert float(again) == pytest.approx(float(got), rel=1e-4)


def test_topk_target_gradient_keeps_the_students_own_tail_shape():
    """Bucketed, the unstored classes are one bucket: the gradient scales the student's tail
    as a whole (grad_c / s_c is the same for every unstored class) instead of pulling it
    towards an even spread, which the dense spread target does."""
    from offline_ssld.cache.codecs import build_codec

    C, k = 10, 2
    codec = build_codec("topk", C, k=k)
    payload = codec.encode(np.arange(C, dtype=float)[None])
    z0 = np.linspace(-2, 1, C).astype(np.float32)[None]
    s = np.exp(z0[0]) / np.exp(z0[0]).sum()
    ratios = {}
    for form, target in (
        ("buckets", codec.decode_target(payload)),
        ("spread", codec.decode(payload)),
    ):
        z = paddle.to_tensor(z0, stop_gradient=False)
        loss, _ = build_loss([{"DistillationDMLLoss": {}}])(
            z, paddle.to_tensor(target), paddle.to_tensor([-1])
        )
        loss.backward()
        grad = z.grad.numpy()[0]
        assert np.isfinite(grad).all()
        ratios[form] = grad[: C - k] / s[: C - k]
    assert np.ptp(ratios["buckets"]) < 1e-4 * np.abs(ratios["buckets"]).max()
    assert np.ptp(ratios["spread"]) > 0.1 * np.abs(ratios["spread"]).max()


def test_topk_target_spread_for_losses_that_need_every_class():
    """DKD (T=1) gets the dense target with the rest spread evenly, i.e. codec.decode."""
    from offline_ssld.cache.codecs import build_codec

    rng = np.random.default_rng(1)
    C = 6
    codec = build_codec("topk", C, k=2)
    payload = codec.encode(rng.normal(0, 2, (3, C)))
    labels = paddle.to_tensor([0, 3, 5])
    z = paddle.to_tensor(rng.normal(0, 1, (3, C)).astype(np.float32))
    loss = build_loss([{"DistillationDKDLoss": {}}])
    bucketed, _ = loss(z, paddle.to_tensor(codec.decode_target(payload)), labels)
    dense, _ = loss(z, paddle.to_tensor(codec.decode(payload)), labels)
    assert float(bucketed) == pytest.approx(float(dense), rel=1e-5)


def _label_variants(entry):
    """The entry's default arguments, and each boolean argument flipped."""
    yield dict(entry.params)
    for arg, default in entry.params.items():
        if isinstance(default, bool):
            yield {**entry.params, arg: not default}


def _depends_on(entry, args, labels_a, labels_b):
    """True if the rows differ between two label tensors, None if this label form is not one
    the loss takes (it raises)."""
    s = T(LOGITS)
    t = T(TEACHER)
    try:
        rows_a, _ = entry.rows(s, t, labels_a, args)
        rows_b, _ = entry.rows(s, t, labels_b, args)
    except (ValueError, RuntimeError, IndexError):
        return None
    return not np.allclose(rows_a.numpy(), rows_b.numpy())


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_registry_label_flags_match_what_each_loss_reads(kind):
    """needs_labels and reads_class_labels are derived here from the row functions: a loss
    whose value moves when the labels move reads them, and must say so (SKD and WSL read the
    class label where a row has one, and once said they did not)."""
    entry = LOSSES[kind]
    unlabeled = T([-1, -1], "int64")
    classes = T([0, 2], "int64")  # not the teacher's argmax, which SKD and WSL fall back to
    attrs_a = T(np.stack([[[1, 0, 1], [0.3, 0.5, 0.2]], [[0, 1, 0], [0.3, 0.5, 0.2]]]))
    attrs_b = T(np.stack([[[0, 1, 0], [0.3, 0.5, 0.2]], [[1, 0, 1], [0.3, 0.5, 0.2]]]))
    read_classes = False
    for args in _label_variants(entry):
        by_class = _depends_on(entry, args, unlabeled, classes)
        by_attrs = _depends_on(entry, args, attrs_a, attrs_b)
        read_classes = read_classes or bool(by_class)
        assert entry.needs_labels(args) == bool(by_class or by_attrs), args
    assert entry.reads_class_labels == read_classes
