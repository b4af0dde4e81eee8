r"""hemorrhage.theory — how compression noise travels h → z → p → generation.

Notation (used in every module, as in SEEDS.md):

    h        hidden state before the final norm (residual stream), shape [..., d]
    Δh, dh   its perturbation by compression
    n(h)     RMSNorm / LayerNorm output;  J = ∂n/∂h its Jacobian
    W        LM head, rows Wᵢ (shape [V, d]);  g the norm gain
    z        logits z = W n(h), shape [..., V] (vocabulary axis last)
    Δz, dz   logit perturbation;  z' = z + Δz
    T        sampling temperature
    p, q     p = softmax(z/T), q = softmax((z + Δz)/T)
    r        escort distribution r = p²/‖p‖² (= softmax(2z/T))
    δ        δ = Δz/T
    Var_w    Var_w(x) = Σ w (x − Σ w x)² for weights w (w = p or r)
    κₙ       cumulants of δ with the token index drawn from p (or r)
    K_w(t)   cumulant generating function log E_w[e^{tδ}] = Σ κₙ tⁿ/n!
    α, ρ     α = ⟨Δh,h⟩/‖h‖², ρ = ‖Δh_⊥‖/‖h‖ (Theorem 1)
    S        token subset (multiple-choice letters), p|S the renormalised p
    m, σ     top-1/top-2 logit margin and std of Δz₁ − Δz₂;  P_flip = Φ(−m/σ)
    S(t)     survival Π_{s≤t}(1 − P_flip,s) of a free-running generation
    Δ, b     quantiser step and bit width (noise Δ²/12)

Modules: ``cosine`` (Theorem 1, norms, head), ``softmax`` (Theorems 2–3, exact
cumulant series, bounds), ``subspace`` (multiple-choice subspace), ``compounding``
(flips, survival, first divergence), ``dephasing`` (the first-order response's
overshoot along the compression path), ``noise`` (quantisation/pruning noise and its
propagation), ``derivations`` (sympy derivations; not imported here, use
``from hemorrhage.theory import derivations``).
See README.md in this folder for the statements, regimes and tests.
"""

from . import compounding, cosine, dephasing, noise, softmax, subspace  # noqa: E402
from .compounding import (
    expected_first_divergence,
    first_divergence_pmf,
    flip_probability,
    greedy_flip_probability,
    greedy_flip_probability_exact_iid,
    gumbel_coupling_divergence_bounds,
    pair_sigma_linear,
    prob_no_divergence,
    sampled_survival_upper_bound,
    stationary_expected_first_divergence,
    survival,
    teacher_forced_agreement,
    teacher_forced_expected_flips,
    top1_agreement,
    top2_margin,
    tv_distance,
    tv_first_order,
)
from .cosine import (
    cos_exact_form,
    cos_sim,
    cos_z_predicted_vs_exact,
    decompose,
    layernorm,
    layernorm_jacobian,
    logit_cos_gain,
    norm_jvp,
    one_minus_cos,
    one_minus_cos_taylor,
    predicted_one_minus_cos_h,
    predicted_one_minus_cos_z,
    rmsnorm,
    rmsnorm_jacobian,
    theorem1_relerr_bound,
)
from .dephasing import dephasing_factor, dephasing_rate
from .noise import (
    clipped_quant_mse,
    equivalent_bits,
    linear_output_noise_energy,
    linear_output_noise_var,
    magnitude_mask,
    magnitude_pruning_noise_var,
    noise_var_per_bit_ratio,
    norm_relative_error,
    optimal_clip_ratio,
    pruning_delta,
    pruning_output_error_diag,
    pruning_output_error_exact,
    quant_noise_var,
    quant_range,
    quant_step,
    quantize_rtn,
    random_pruning_noise_var,
    residual_error_energy,
    sqnr_db,
    sqnr_db_rule,
    uniform_noise_var,
)
from .softmax import (
    cos_second_order,
    cos_second_order_error_bound,
    cos_second_order_relerr_rms,
    cosine_cgf,
    cosine_pq,
    cumulants,
    delta_cumulants,
    escort,
    expected_var_linear,
    fisher_matrix,
    fisher_quadratic,
    kl_cgf,
    kl_exact,
    half_var_p,
    half_var_p_relerr_rms,
    kl_series,
    kl_series_coefficients,
    kl_series_remainder_bound,
    log_cosine_series,
    log_cosine_series_coefficients,
    log_cosine_series_remainder_bound,
    log_softmax_T,
    one_minus_cos_exact,
    one_minus_cos_series,
    reverse_kl_exact,
    reverse_kl_series,
    reverse_kl_series_coefficients,
    reverse_kl_series_remainder_bound,
    tilted_cumulants,
    var_p,
    var_r,
    weighted_mean,
    weighted_var,
)
from .subspace import (
    expected_kl_iid,
    expected_kl_linear,
    kl_chain_rule,
    mask_from_indices,
    subset_cosine,
    subset_flip_probability,
    subset_kl,
    subset_half_var_p,
    subset_logits,
    subset_mass,
    subset_vs_full_expected_kl,
)

__all__ = [
    # Theorem 1 — cosine.py
    "cos_sim",
    "one_minus_cos",
    "decompose",
    "cos_exact_form",
    "one_minus_cos_taylor",
    "theorem1_relerr_bound",
    "rmsnorm",
    "layernorm",
    "rmsnorm_jacobian",
    "layernorm_jacobian",
    "norm_jvp",
    "predicted_one_minus_cos_h",
    "predicted_one_minus_cos_z",
    "logit_cos_gain",
    "cos_z_predicted_vs_exact",
    # Theorems 2, 3 — softmax.py
    "log_softmax_T",
    "escort",
    "weighted_mean",
    "weighted_var",
    "var_p",
    "var_r",
    "cumulants",
    "delta_cumulants",
    "tilted_cumulants",
    "kl_exact",
    "kl_cgf",
    "reverse_kl_exact",
    "cosine_pq",
    "cosine_cgf",
    "one_minus_cos_exact",
    "half_var_p",
    "cos_second_order",
    "kl_series_coefficients",
    "reverse_kl_series_coefficients",
    "log_cosine_series_coefficients",
    "kl_series",
    "reverse_kl_series",
    "log_cosine_series",
    "one_minus_cos_series",
    "kl_series_remainder_bound",
    "reverse_kl_series_remainder_bound",
    "log_cosine_series_remainder_bound",
    "cos_second_order_error_bound",
    "fisher_matrix",
    "fisher_quadratic",
    "expected_var_linear",
    "half_var_p_relerr_rms",
    "cos_second_order_relerr_rms",
    # categorical subspace — subspace.py
    "mask_from_indices",
    "subset_logits",
    "subset_mass",
    "subset_kl",
    "subset_cosine",
    "subset_half_var_p",
    "kl_chain_rule",
    "expected_kl_iid",
    "expected_kl_linear",
    "subset_vs_full_expected_kl",
    "subset_flip_probability",
    # temporal compounding — compounding.py
    "top2_margin",
    "top1_agreement",
    "flip_probability",
    "greedy_flip_probability",
    "greedy_flip_probability_exact_iid",
    "pair_sigma_linear",
    "survival",
    "first_divergence_pmf",
    "expected_first_divergence",
    "prob_no_divergence",
    "stationary_expected_first_divergence",
    "teacher_forced_agreement",
    "teacher_forced_expected_flips",
    "tv_distance",
    "tv_first_order",
    "gumbel_coupling_divergence_bounds",
    "sampled_survival_upper_bound",
    # dephasing along the compression path — dephasing.py
    "dephasing_factor",
    "dephasing_rate",
    # noise models — noise.py
    "quant_range",
    "quant_step",
    "quantize_rtn",
    "quant_noise_var",
    "uniform_noise_var",
    "sqnr_db",
    "sqnr_db_rule",
    "noise_var_per_bit_ratio",
    "clipped_quant_mse",
    "optimal_clip_ratio",
    "pruning_delta",
    "magnitude_mask",
    "magnitude_pruning_noise_var",
    "random_pruning_noise_var",
    "pruning_output_error_exact",
    "pruning_output_error_diag",
    "linear_output_noise_var",
    "linear_output_noise_energy",
    "residual_error_energy",
    "norm_relative_error",
    "equivalent_bits",
    # modules
    "compounding",
    "cosine",
    "dephasing",
    "noise",
    "softmax",
    "subspace",
]
