# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Integrators as optimizers: order of accuracy and stability
#
# Two properties of an ODE integrator decide what it is worth as an optimizer
# of $f$:
#
# 1. its **order** $p$: one step of size $h$ follows the gradient flow
#    $\dot\theta = -\nabla f(\theta)$ with local error $O(h^{p+1})$, so after a
#    fixed time $T$ the error is $O(h^p)$;
# 2. its **stability region**: on a quadratic with Hessian eigenvalues in
#    $(0, L]$ the method converges only if every $z = -h\mu$ lies in the
#    region. The real interval $[-x, 0]$ inside it gives the largest stable
#    step, $h < x/L$: $x = 2$ for Euler (gradient descent) and for every
#    two-stage second-order method, $2.513$ for RK3, $2.785$ for RK4.
#
# This notebook measures both, then asks what they mean for the largest
# usable learning rate of a small neural network. Everything runs in float64,
# so that errors down to $10^{-12}$ are visible.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import flowopt
from flowopt import analysis

METHODS = {
    "euler": flowopt.euler,
    "heun": flowopt.heun,
    "ralston": flowopt.ralston,
    "midpoint": flowopt.midpoint,
    "rk3": flowopt.rk3,
    "ssprk3": flowopt.ssprk3,
    "rk4": flowopt.rk4,
    "rk38": flowopt.rk38,
}
ORDER = {name: getattr(flowopt.tableaus, name.upper()).order for name in METHODS}
STAGES = {name: getattr(flowopt.tableaus, name.upper()).num_stages for name in METHODS}


def final_params(make, value_fn, params, learning_rate, steps):
    """``steps`` full-batch steps of the optimizer ``make(learning_rate)`` from ``params``."""
    tx = make(learning_rate)

    def body(_, carry):
        params, state = carry
        grads = jax.grad(value_fn)(params)
        updates, state = tx.update(grads, state, params, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    return jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))[0]


# One compilation per (method, problem): learning rate and step count are traced.
final_params = jax.jit(final_params, static_argnums=(0, 1))

# %% [markdown]
# ## 1. Order of accuracy
#
# Integrate to $T = 1$ with $N$ steps of size $h = T/N$ and compare with the
# exact flow. On a quadratic $f(\theta) = \tfrac12\theta^\top H\theta$ the flow is
# $\theta(T) = e^{-HT}\theta_0$. On a nonlinear loss (logistic regression on
# random data) the reference is `flowopt.analysis.gradient_flow`, an adaptive
# Dormand–Prince solve at tolerance $10^{-13}$. The slope of
# $\log(\text{error})$ against $\log h$ is the measured order.

# %%
key_q, key_x, key_w = jax.random.split(jax.random.key(0), 3)
Q, _ = jnp.linalg.qr(jax.random.normal(key_q, (4, 4)))
H = Q @ jnp.diag(jnp.array([0.2, 0.7, 1.5, 3.0])) @ Q.T


def quadratic(theta):
    return 0.5 * theta @ H @ theta


x = jax.random.normal(key_x, (64, 4))
y = (x @ jax.random.normal(key_w, (4,)) + 0.5 * jax.random.normal(key_w, (64,)) > 0).astype(jnp.float64)


def logistic(theta):
    logits = x @ theta
    return jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)


theta0 = jnp.array([1.0, -1.0, 0.5, 2.0])
T = 1.0
exact = {
    "quadratic": jax.scipy.linalg.expm(-H * T) @ theta0,
    "logistic": analysis.gradient_flow(logistic, theta0, jnp.array([T]), rtol=1e-13, atol=1e-13).params[-1],
}
problems = {"quadratic": quadratic, "logistic": logistic}
steps_grid = np.array([4, 8, 16, 32, 64])

errors = {
    (problem, name): np.array(
        [float(jnp.linalg.norm(final_params(make, problems[problem], theta0, T / n, n) - exact[problem])) for n in steps_grid]
    )
    for problem in problems
    for name, make in METHODS.items()
}
slopes = {key: np.polyfit(np.log(T / steps_grid), np.log(err), 1)[0] for key, err in errors.items()}

print(f"{'method':>9} {'order':>5} {'slope (quadratic)':>18} {'slope (logistic)':>17}")
for name in METHODS:
    print(f"{name:>9} {ORDER[name]:>5} {slopes['quadratic', name]:>18.2f} {slopes['logistic', name]:>17.2f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, problem in zip(axes, problems):
    for name in ("euler", "heun", "rk3", "rk4"):
        ax.loglog(T / steps_grid, errors[problem, name], "o-", label=f"{name}: slope {slopes[problem, name]:.2f}")
    ax.set(xlabel="step size h", title=f"{problem}: error at T = {T}")
    ax.set_xticks(T / steps_grid, [f"1/{n}" for n in steps_grid], minor=False)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.grid(alpha=0.3)
    ax.legend()
axes[0].set_ylabel("‖θ_N - θ(T)‖")
plt.show()

# %% [markdown]
# The measured slopes match the orders of the tableaus. On the quadratic they
# come out a little above $p$ because the coarsest steps ($hL = 0.75$) are not
# yet in the asymptotic regime. Heun, Ralston and midpoint give identical
# numbers there (as do RK3 and SSPRK3, RK4 and RK38): on a linear problem a
# step multiplies by the polynomial $R(-hH)$, which is the same for every
# explicit method with $s = p \le 4$; they differ only on nonlinear losses.
#
# ## 2. Stability regions
#
# On the quadratic, one step multiplies the component along an eigenvector of
# eigenvalue $\mu$ by $R(z)$, $z = -h\mu$, where $R$ is the method's stability
# function (a polynomial of degree $s$ for an explicit $s$-stage method). The
# iteration converges when $|R(z)| < 1$ for every eigenvalue: the bold segment
# of the negative real axis must lie inside the region.

# %%
fig = analysis.plot_stability_regions(["euler", "heun", "rk3", "rk4"])
fig

# %%
intervals = {name: analysis.stability_interval(getattr(flowopt.tableaus, name.upper())) for name in METHODS}
for name, x_max in intervals.items():
    print(f"{name:>9}: stable for h·L < {x_max:.4f}")

# %% [markdown]
# ### The largest stable learning rate on a quadratic
#
# Sweep the learning rate finely and run 400 steps from the same start: a
# rate is stable when the iterate shrank. The quadratic above has $L = 3$; the
# measured threshold times $L$ should be the stability interval. Backward
# Euler (implicit, a proximal step solved by a few inner gradient steps) is
# stable for every step on a convex problem, at the price of its inner
# iterations.

# %%
L = 3.0
grid = np.linspace(0.5, 3.2, 541) / L  # resolution 0.005 / L


def stable(make, learning_rate):
    return jnp.linalg.norm(final_params(make, quadratic, theta0, learning_rate, 400)) < jnp.linalg.norm(theta0)


def largest_stable(make):
    ok = np.array(jax.vmap(lambda lr: stable(make, lr))(jnp.asarray(grid)))
    first_unstable = np.argmin(ok) if not ok.all() else len(grid)
    return grid[first_unstable - 1] if first_unstable > 0 else 0.0


print(f"{'method':>9} {'measured h·L':>13} {'interval':>9}")
for name in ("euler", "heun", "ralston", "rk3", "ssprk3", "rk4", "rk38"):
    print(f"{name:>9} {largest_stable(METHODS[name]) * L:>13.3f} {intervals[name]:>9.3f}")
implicit = lambda lr: flowopt.backward_euler(lr, inner_steps=10)
print(f"{'bwd euler':>9} {largest_stable(implicit) * L:>13.3f}       inf   (end of the sweep: {grid[-1] * L:.1f})")

# %% [markdown]
# Between $2/L$ and $2.785/L$ RK4 converges and gradient descent does not:

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for name, color in (("euler", "C0"), ("heun", "C1"), ("rk4", "C3")):
    for lr_times_L, style in ((1.9, "-"), (2.6, "--")):
        path = [float(quadratic(final_params(METHODS[name], quadratic, theta0, lr_times_L / L, n))) for n in range(0, 41, 2)]
        ax.semilogy(range(0, 41, 2), path, style, color=color, label=f"{name}, h = {lr_times_L}/L")
ax.set(xlabel="steps", ylabel="f(θ)", title="quadratic, L = 3")
ax.legend(fontsize="small", ncol=2)
plt.show()

# %% [markdown]
# ## 3. What stability means on a neural network
#
# A network's Hessian changes along training, so $2/L$ at initialisation is a
# guide, not a law. Train a small tanh MLP (1-32-32-1, 1,153 parameters, a
# full-batch regression) with each method over a sweep of learning rates, and
# call a rate *usable* when the final loss is finite and below the initial
# loss; the largest usable rate is the end of the range of usable rates that
# starts at the smallest rate (near the edge, single rates beyond it may
# train again). The sharpness $L = \lambda_{\max}(\nabla^2 f)$ at initialisation comes
# from `flowopt.analysis.extreme_eigenvalues` (Lanczos on Hessian-vector
# products).

# %%
key1, key2, key3 = jax.random.split(jax.random.key(1), 3)
xs = jnp.linspace(-2, 2, 64)[:, None]
ys = jnp.sin(2 * xs) + 0.3 * xs**2
mlp0 = {
    "w1": jax.random.normal(key1, (1, 32)),
    "b1": jnp.zeros(32),
    "w2": jax.random.normal(key2, (32, 32)) / jnp.sqrt(32),
    "b2": jnp.zeros(32),
    "w3": jax.random.normal(key3, (32, 1)) / jnp.sqrt(32),
    "b3": jnp.zeros(1),
}


def mlp_loss(p):
    h = jnp.tanh(xs @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return 0.5 * jnp.mean((h @ p["w3"] + p["b3"] - ys) ** 2)


lambda_min0, lambda_max0 = analysis.extreme_eigenvalues(mlp_loss, mlp0)
print(f"{sum(v.size for v in jax.tree.leaves(mlp0))} parameters, initial loss {float(mlp_loss(mlp0)):.4f}")
print(
    f"at initialisation: λ_max = {float(lambda_max0):.3f}, λ_min = {float(lambda_min0):.4f}, "
    f"2/λ_max = {2 / float(lambda_max0):.3f}"
)

# %%
BUDGET = 1200  # gradient evaluations per run
lr_grid = jnp.geomspace(0.2, 20.0, 48) * 2 / lambda_max0
initial = mlp_loss(mlp0)


def sweep(make, steps):
    final = jax.vmap(lambda lr: mlp_loss(final_params(make, mlp_loss, mlp0, lr, steps)))(lr_grid)
    return np.where(np.isfinite(final), final, np.inf)


mlp_methods = ("euler", "heun", "rk3", "rk4")
finals = {name: sweep(METHODS[name], BUDGET // STAGES[name]) for name in mlp_methods}


def largest_usable(final):
    """The largest rate of the grid below which every rate is usable."""
    usable = final < float(initial)
    first_unusable = len(usable) if usable.all() else int(np.argmin(usable))
    return float(lr_grid[first_unusable - 1]) if first_unusable > 0 else float("nan")


base = largest_usable(finals["euler"])
print(
    f"{'method':>6} {'steps':>6} {'largest usable lr':>18} {'× 2/λ_max(0)':>13} {'ratio to euler':>15} "
    f"{'interval ratio':>15} {'best loss':>10}"
)
for name in mlp_methods:
    lr_max = largest_usable(finals[name])
    print(
        f"{name:>6} {BUDGET // STAGES[name]:>6} {lr_max:>18.3f} {lr_max * float(lambda_max0) / 2:>13.2f} "
        f"{lr_max / base:>15.2f} {intervals[name] / 2:>15.3f} {finals[name].min():>10.2e}"
    )

fig, ax = plt.subplots(figsize=(7, 4))
for name in mlp_methods:
    label = f"{name} ({BUDGET // STAGES[name]} steps)"
    ax.loglog(lr_grid * lambda_max0 / 2, np.minimum(finals[name], 10.0), "o-", ms=3, label=label)
ax.axhline(float(initial), color="0.5", linestyle=":", label="initial loss")
ax.axvline(1.0, color="0.5", linewidth=0.8)
ax.set(
    xlabel="learning rate × λ_max(0) / 2", ylabel="final loss (capped at 10)", title=f"MLP, {BUDGET} gradient evaluations per run"
)
ax.legend(fontsize="small")
plt.show()

# %% [markdown]
# How to read the sweep:
#
# - Every method trains well beyond $2/\lambda_{\max}(0)$: on a network the
#   quadratic limit at initialisation underestimates the usable range (a large
#   step drives the iterate to flatter regions before it can diverge).
# - The usable range grows with the stability interval, RK3 and RK4 reaching
#   further than Euler, but by more than the quadratic ratios ($1.256$ and
#   $1.393$), and Heun, whose interval is Euler's, also reaches further. Off
#   the quadratic, the higher-degree terms of the stability polynomial matter,
#   and so does the number of steps: every run has the same budget of gradient
#   evaluations, so Euler takes four times as many steps as RK4, each a chance
#   to diverge.
# - At **equal gradient evaluations** gradient descent reaches the lowest loss
#   (the *best loss* column, each method at its best rate): RK4's larger usable
#   step does not make up for taking a quarter of the steps.
#
# Higher order helps when the goal is to *follow the flow* (the error slopes
# above), and a larger stability interval helps when the step is limited by
# the sharpest direction; neither made an explicit method cheaper per gradient
# than gradient descent on this network.

# %% [markdown]
# ## 4. Stability that grows faster than cost: Runge–Kutta–Chebyshev
#
# Classical methods buy stability no faster than they spend gradients (RK4:
# interval 2.785 for 4 gradients). A Chebyshev method chooses its stability
# polynomial for the interval instead of for the order: with $s$ stages,
#
# $$R_s(z) = \frac{T_s(\omega_0 + \omega_1 z)}{T_s(\omega_0)}, \qquad
# \omega_0 = 1 + \varepsilon/s^2, \quad \omega_1 = T_s(\omega_0)/T_s'(\omega_0),$$
#
# is stable on $[-\ell_s, 0]$ with $\ell_s \approx 1.94\,s^2$ at the damping
# $\varepsilon = 0.05$: the stable step *per gradient* grows like $s$
# (`flowopt.rkc`; Eftekhari, Vandereycken, Vilmart & Zygalakis, BIT 2021).

# %%
print(f"{'s':>4} {'ℓ_s':>10} {'ℓ_s / s':>8}   (gradient descent: ℓ = 2 per gradient)")
for s in (1, 2, 5, 10, 20, 50):
    ell = analysis.stability_interval(flowopt.rk.chebyshev.chebyshev_method(s))
    print(f"{s:>4} {ell:>10.2f} {ell / s:>8.2f}")

fig, ax = plt.subplots(figsize=(7, 3.5))
for s, color in ((5, "C0"), (10, "C1")):
    method = flowopt.rk.chebyshev.chebyshev_method(s)
    x = np.linspace(0, method.stability_interval * 1.02, 800)
    ax.plot(x, method.stability_function(-x).real, color=color, label=f"rkc, s = {s}")
ax.plot(x, 1 - x, "k:", label="gradient descent: 1 − x")
ax.axhspan(-1, 1, color="0.9")
ax.set(xlabel="x = hλ", ylabel="R(−x)", ylim=(-1.5, 1.5), title="one step's factor along an eigenvector of eigenvalue λ")
ax.legend(fontsize="small")
plt.show()

# %% [markdown]
# On a quadratic with eigenvalues log-spaced in $[1, \kappa]$, $\kappa = 10^4$,
# count gradient evaluations until $f \le 10^{-6} f_0$: gradient descent at
# its best step $2/(\mu + L)$, Nesterov's method with its optimal constant
# momentum, and RKC at $h L = 0.9\,\ell_s$: $s = 20$ with the default damping,
# and $s = 50$ with a heavier damping $\varepsilon = 2$.

# %%
kappa = 1e4
eigenvalues = jnp.logspace(0, 4, 200)
chebyshev_loss = lambda x: 0.5 * jnp.sum(eigenvalues * x**2)
x0 = jnp.ones(200)


def evaluations_to_target(tx, steps, target=1e-6):
    """Gradient evaluations (steps plus oracle calls) at the first step with f ≤ target · f(x0)."""

    def body(carry, _):
        x, state = carry
        updates, state = tx.update(jax.grad(chebyshev_loss)(x), state, x, value_fn=chebyshev_loss)
        x = x + updates
        return (x, state), (chebyshev_loss(x), flowopt.oracle_evaluations(state))

    _, (losses, calls) = jax.jit(lambda x: jax.lax.scan(body, (x, tx.init(x)), None, length=steps))(x0)
    reached = np.flatnonzero(np.asarray(losses) <= target * float(chebyshev_loss(x0)))
    return int(reached[0] + 1 + calls[reached[0]]) if reached.size else None


root = np.sqrt(kappa)
ell_20 = flowopt.rk.chebyshev.chebyshev_method(20).stability_interval
ell_50 = flowopt.rk.chebyshev.chebyshev_method(50, damping=2.0).stability_interval
runs = {
    "gradient descent, h = 2/(μ+L)": (flowopt.euler(2 / (1 + kappa)), 200_000),
    "Nesterov, h = 1/L, β = (√κ−1)/(√κ+1)": (optax.sgd(1 / kappa, momentum=(root - 1) / (root + 1), nesterov=True), 20_000),
    "rkc, s = 20, ε = 0.05, hL = 0.9 ℓ_s": (flowopt.rkc(20, 0.9 * ell_20 / kappa), 2_000),
    "rkc, s = 50, ε = 2, hL = 0.9 ℓ_s": (flowopt.rkc(50, 0.9 * ell_50 / kappa, damping=2.0), 200),
    "rkc_auto, h = 0.9 ℓ_20 / L (s from Lanczos)": (flowopt.rkc_auto(0.9 * ell_20 / kappa, estimate_every=1000), 2_000),
}
for label, (tx, steps) in runs.items():
    print(f"{label:>44}: {evaluations_to_target(tx, steps)} gradient evaluations")

# %% [markdown]
# With the default damping, $s = 20$ needs about a thirteenth of gradient
# descent's evaluations but five times Nesterov's: a lightly damped polynomial
# comes close to $\pm 1$ at many points inside the interval, and the
# eigenvalues near them barely contract. Heavier damping with more stages
# spreads the contraction and comes within about 10% of Nesterov's method,
# tuned here with the known $\mu$ and $L$. `rkc_auto` needs neither: it
# estimates the sharpness by Lanczos on Hessian-vector products (counted at
# two gradients each) and picks $s$ itself. The study
# `flowopt-experiment stabilized` measures these rates across $\kappa$, on
# logistic regression and on a network, with every method at its best setting.
