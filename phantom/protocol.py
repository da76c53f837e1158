"""The pre-registered protocol: every constant of SPEC §2 and §4–§6, and nothing else.

This module mirrors the specification section by section. Every other module imports its
constants from here; none defines its own. Changing a value here changes what phantom
measures: never do it to make a claim pass (SPEC preamble).
"""
from __future__ import annotations

# --- §2 quantities: bulk classes (Fig. 6) ----------------------------------------------
CLASS_A_BAND = (0.045, 0.097)   # G²mean of a dense Gaussian bulk
CLASS_B_BAND = (0.002, 0.003)   # G²mean of a sparse exponential (Laplace) bulk
BULK_PAIRS = 1_000_000          # ≥ 10⁶ sampled off-diagonal pairs for the shape fit
BULK_SEED = 0                   # fixed seed of that sample

# --- §4 fine-tuning protocol -----------------------------------------------------------
STEPS = 30                      # T updates; t = 0..T recorded
SEED = 0
BETAS, EPS = (0.9, 0.999), 1e-8  # AdamW; weight decay 0, constant LR, no warm-up, no clipping
WEIGHT_DECAY = 0.0
LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 8, 16, 0.0   # on the attention query and value projections
MODES = ("full", "lora")
FULL_GRID = (2e-6, 5e-6, 1e-5, 2e-5, 5e-5)         # full-FT sweep
EXTENDED_GRID = (2e-7, 5e-7, 1e-6)                 # below it, for the saturation fits
LORA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
ETA_REF = 2e-5                  # full-FT reference LR (also η_ref of H = η_ref / η_sat)
LORA_REF = 1e-3                 # LoRA reference LR
PROTOCOL_VERSION = 1            # bumped whenever a §4 value above changes

# --- §5 trajectory analysis ------------------------------------------------------------
JUMP_RATIO = 10.0               # J ≥ 10 is a jump; J < 10 is smooth
JUMP_SIZE = 0.05                # and |ΔΦ_{t*}| ≥ 0.05 (1 − G_max²)
QUIESCENT = 0.1                 # quiet step: |ΔΦ_t| < 0.1 |ΔΦ_{t*}|
LOSS_TOLERANCE = 1e-6           # non-increasing loss: L_{t+1} ≤ L_t + 1e-6
KINEMATIC_SIGNAL = 0.1          # kinematic failure: |S_t| ≤ 0.1 (1 − G_max²) for all t
STRUCTURAL_DRAG = -0.01         # structural failure: D_T − D_0 < −0.01
CRITICAL_FRACTION = 0.5         # η_c: at least half of the usable contexts Born-flip by T
CRITICAL_RTOL = 0.01            # bisection in log η to 1% relative precision
# §8 amendments (2026-12-06)
SAT_BRACKET = 2                 # A1: measured LRs needed on each side of a context's η_sat
SAT_BELOW = (1e-7, 5e-8, 2e-8, 1e-8, 5e-9, 2e-9)   # A1: 1–2–5 steps, two decades below the extended grid
SAT_ABOVE = (1e-4, 2e-4, 5e-4)                     # A1: one decade above it
CONTEXT_RTOL = 0.05             # A2: each per-context critical LR η_i to 5% (η_c's to CRITICAL_RTOL)
OPERATING_H = 10.0              # A4: C3′ and C6′ at η_H = 10 η_sat(model)

# --- §6 verdict thresholds -------------------------------------------------------------
DECOMPOSITION_TOL = 1e-6        # C2: |Φ − S − D| at every recorded step
C5_MIN_JUMPS = 2                # C5: jumping contexts at the LoRA reference LR
SPEARMAN_LORA_MAX = 0.3         # C5b: |Spearman(G_max, J)| under LoRA
H_CV_MAX = 0.10                 # C9: CV of H_FT over ≥ 2 models
SUFFICIENCY_SPLIT = 0.8         # C11: LoRA sufficiency of class B ≥ 0.8, of class A < 0.8
BURIAL_RHO_MIN = 0.8            # C12: |Spearman| of B_FT with G²mean and with H
BURIAL_MIN_MODELS = 3           # C12: over ≥ 3 models
BLIND_REL_ERROR_MAX = 0.021     # C13: every leave-one-out relative error ≤ 2.1%
# A6: uncertainty (the context is the unit of sampling)
BOOTSTRAP_B = 1000              # bootstrap resamples of the usable contexts
BOOTSTRAP_SEED = 0
FRAGILE_BELOW = 0.8             # a verdict with stability < 0.8 is marked fragile
INTERVAL = 0.95                 # percentile interval of every context-dependent numeric value
PERMUTATION_EXACT_MAX = 8       # exact permutation p-values (all n! orderings) for n ≤ 8
PERMUTATIONS = 100_000          # else this many random orderings
PERMUTATION_SEED = 0
