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
# # Continuous vs discrete: gradient descent and the gradient flow
#
# Gradient descent with step $\eta$ is forward Euler on the gradient flow, so
# its iterate $\theta_k$ should stay near the flow at time $t_k = k\eta$. How
# near? Elkabetz & Cohen (*Continuous vs. Discrete Optimization of Deep Neural
# Networks*, NeurIPS 2021) bound the distance by
#
# $$
# \|\theta_k - \theta(k\eta)\| \;\lesssim\;
# \eta\, t\, \exp\Big(\int_0^t \lambda_{\min}^-\big(\nabla^2 f(\theta(t'))\big)\,dt'\Big),
# \qquad \lambda^-_{\min} = \max(-\lambda_{\min}, 0):
# $$
#
# only *negative* curvature along the flow lets the two drift apart, and deep
# networks have little of it along their trajectories. This notebook measures
# the distance on a small network with `flowopt.analysis`, follows
# $\lambda_{\min}$ along the flow, checks that gradient descent tracks the
# *modified* flow of $f + \tfrac{\eta}{4}\|\nabla f\|^2$ to second order, and
# ends at the edge of stability, where the flow no longer describes it.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import flowopt
from flowopt import analysis

# %% [markdown]
# ## A small network
#
# A 2-16-16-1 tanh network (337 parameters) fit to 48 points by full-batch
# mean squared error, in float64.

# %%
k = jax.random.split(jax.random.key(0), 5)
x = jax.random.normal(k[0], (48, 2))
y = jnp.sin(2 * x[:, :1]) * x[:, 1:2]
params0 = {
    "w1": jax.random.normal(k[1], (2, 16)) / jnp.sqrt(2),
    "b1": jnp.zeros(16),
    "w2": jax.random.normal(k[2], (16, 16)) / jnp.sqrt(16),
    "b2": jnp.zeros(16),
    "w3": jax.random.normal(k[3], (16, 1)) / jnp.sqrt(16),
    "b3": jnp.zeros(1),
}


def loss(p):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return 0.5 * jnp.mean((h @ p["w3"] + p["b3"] - y) ** 2)


lambda_min0, lambda_max0 = analysis.extreme_eigenvalues(loss, params0)
print(
    f"{sum(v.size for v in jax.tree.leaves(params0))} parameters; at initialisation loss {float(loss(params0)):.4f}, "
    f"λ_max {float(lambda_max0):.3f} (so GD is stable for η < {2 / float(lambda_max0):.2f}), λ_min {float(lambda_min0):.4f}"
)

# %% [markdown]
# ## Gradient descent against the flow
#
# Run gradient descent (`flowopt.euler`, which is `optax.sgd`) for flow time
# $T = 20$ at three step sizes with `analysis.optimizer_trajectory`, and solve
# the flow at the same times with `analysis.gradient_flow` (adaptive
# Dormand–Prince; in float64 its default tolerance is $10^{-8}$ relative).

# %%
T = 20.0
etas = [0.05, 0.1, 0.2]
fine_times = analysis.step_times(etas[0], round(T / etas[0]))  # contains the other step sizes' times
flow = analysis.gradient_flow(loss, params0, fine_times)
print(f"the flow: {int(flow.num_steps)} adaptive steps, {int(flow.oracle_evals)} gradient evaluations")


def every_nth(tree, n):
    return jax.tree.map(lambda p: p[::n], tree)


runs = {}
for eta in etas:
    stride = round(eta / etas[0])
    gd = analysis.optimizer_trajectory(flowopt.euler(eta), loss, params0, round(T / eta))
    runs[eta] = {
        "times": fine_times[::stride],
        "gd": gd,
        "flow": every_nth(flow.params, stride),
        "distance": analysis.trajectory_distance(gd, every_nth(flow.params, stride)),
    }
    print(f"η = {eta}: {round(T / eta)} GD steps, max distance to the flow {float(runs[eta]['distance'].max()):.2e}")

final_point = jax.tree.map(lambda p: p[-1:], runs[etas[0]]["flow"])
distance_from_init = analysis.trajectory_distance(final_point, jax.tree.map(lambda p: p[None], params0))
max_distance = [float(runs[eta]["distance"].max()) for eta in etas]
order = np.polyfit(np.log(etas), np.log(max_distance), 1)[0]
print(f"max distance ∝ η^{order:.2f}; the flow itself moves {float(distance_from_init[-1]):.2f} from initialisation")

# %%
fig, (ax_loss, ax_dist) = plt.subplots(1, 2, figsize=(12, 4))
flow_losses = jax.vmap(loss)(runs[etas[0]]["flow"])
ax_loss.semilogy(runs[etas[0]]["times"], flow_losses, "k--", label="gradient flow")
for eta in etas:
    ax_loss.semilogy(runs[eta]["times"], jax.vmap(loss)(runs[eta]["gd"]), alpha=0.8, label=f"GD, η = {eta}")
    ax_dist.plot(runs[eta]["times"], runs[eta]["distance"], label=f"η = {eta}")
ax_loss.set(xlabel="time t = kη", ylabel="training loss", title="loss along GD and the flow")
ax_dist.set(xlabel="time t = kη", ylabel="‖θ_k - θ(kη)‖", title="distance from the flow")
ax_loss.legend()
ax_dist.legend()
plt.show()

# %% [markdown]
# The loss curves lie on top of each other, and the distance, small
# compared with how far the parameters travel, is proportional to $\eta$
# (the measured exponent is close to 1): gradient descent is a first-order
# approximation of the flow along the whole trajectory.
#
# ## $\lambda_{\min}$ along the flow and the bound
#
# `analysis.spectrum_along` runs Lanczos on Hessian-vector products at every
# point of a trajectory, and `analysis.gd_error_bound` integrates the negative
# part of $\lambda_{\min}$ along the flow into the shape of the bound. The
# bound's constant depends on the gradient's smoothness, so it is drawn here
# with the smallest constant that makes it an upper bound of the measured
# distance.

# %%
eta = etas[1]
every = 10
flow_points = jax.tree.map(lambda p: p[::every], runs[eta]["flow"])
spectrum = analysis.spectrum_along(loss, flow_points)
times = runs[eta]["times"][::every]
bound = analysis.gd_error_bound(times, spectrum.lambda_min, eta)
measured = runs[eta]["distance"][::every]
scale = float(jnp.max(measured[1:] / bound.bound[1:]))  # the smallest constant that makes it a bound

fig, (ax_spec, ax_bound) = plt.subplots(1, 2, figsize=(12, 4))
ax_spec.plot(times, spectrum.lambda_min, label="λ_min")
ax_spec.plot(times, spectrum.lambda_max / 100, label="λ_max / 100")
ax_spec.axhline(0, color="0.6", linewidth=0.8)
ax_spec.set(xlabel="time t", title="Hessian extremes along the flow")
ax_spec.legend()
ax_bound.plot(times, measured, label="measured distance")
ax_bound.plot(times, scale * bound.bound, "--", label=f"η t exp(∫λ⁻_min) × {scale:.2g}")
ax_bound.set(xlabel="time t", ylabel="‖θ_k - θ(kη)‖", title=f"η = {eta}")
ax_bound.legend()
plt.show()
print(
    f"λ_min from {float(spectrum.lambda_min[0]):.3f} to {float(spectrum.lambda_min[-1]):.3f}; "
    f"∫λ⁻_min dt up to T = {float(bound.negative_curvature[-1]):.2f}, "
    f"so exp(∫) = {float(np.exp(bound.negative_curvature[-1])):.1f}"
)

# %% [markdown]
# The curvature is negative along the whole flow, most at the start, and its
# magnitude decays as the flow settles into a basin. The bound's exponential
# factor therefore keeps growing, while the measured distance grows, peaks
# and then *falls*: near a minimum the flow contracts and pulls gradient
# descent back towards it. The bound is a worst case; what it gets right is
# that the distance is proportional to $\eta$ and that only negative
# curvature can make it grow faster than $\eta t$.

# %% [markdown]
# ## The modified flow
#
# Backward error analysis says more: gradient descent follows the flow of the
# *modified* loss $\tilde f = f + \tfrac{\eta}{4}\|\nabla f\|^2$ up to
# $O(\eta^2)$ (Barrett & Dherin, *Implicit Gradient Regularization*, ICLR
# 2021). `analysis.modified_value_fn(loss, eta)` builds $\tilde f$ (its
# gradient costs one Hessian-vector product), and `gradient_flow` solves its
# flow.

# %%
modified_distance = []
for eta in etas:
    stride = round(eta / etas[0])
    modified = analysis.gradient_flow(analysis.modified_value_fn(loss, eta), params0, fine_times)
    runs[eta]["modified"] = analysis.trajectory_distance(runs[eta]["gd"], every_nth(modified.params, stride))
    modified_distance.append(float(runs[eta]["modified"].max()))
modified_order = np.polyfit(np.log(etas), np.log(modified_distance), 1)[0]

fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(etas, max_distance, "o-", label=f"to the gradient flow: slope {order:.2f}")
ax.loglog(etas, modified_distance, "o-", label=f"to the modified flow: slope {modified_order:.2f}")
ax.set_xticks(etas, [str(e) for e in etas])
ax.xaxis.set_minor_locator(plt.NullLocator())
ax.set(xlabel="step η", ylabel=f"max_k distance, t ≤ {T}", title="GD against two flows")
ax.legend()
plt.show()
for eta, d, m in zip(etas, max_distance, modified_distance):
    print(f"η = {eta}: distance to the flow {d:.2e}, to the modified flow {m:.2e}")

# %% [markdown]
# ## The edge of stability
#
# With a step beyond $2/\lambda_{\max}$ of the initialisation, gradient
# descent cannot follow the flow: along the flow the sharpness here stays
# above $2/\eta$, where Euler is unstable. What happens instead is the *edge
# of stability* (Cohen et al., ICLR 2021): the iterates leave the flow, and
# the sharpness along gradient descent falls to about $2/\eta$ and hovers
# there while the loss keeps decreasing, non-monotonically.

# %%
eta_large = 2.4 / float(lambda_max0)
steps = round(T / eta_large)
gd_large = analysis.optimizer_trajectory(flowopt.euler(eta_large), loss, params0, steps)
times_large = analysis.step_times(eta_large, steps)
flow_large = analysis.gradient_flow(loss, params0, times_large).params
every = max(1, steps // 60)
sharp_gd = analysis.sharpness(loss, jax.tree.map(lambda p: p[::every], gd_large))
sharp_flow = analysis.sharpness(loss, jax.tree.map(lambda p: p[::every], flow_large))

fig, (ax_sharp, ax_loss) = plt.subplots(1, 2, figsize=(12, 4))
ax_sharp.plot(times_large[::every], sharp_gd, label="along gradient descent")
ax_sharp.plot(times_large[::every], sharp_flow, "k--", label="along the flow")
ax_sharp.axhline(2 / eta_large, color="C3", linestyle=":", label="2/η")
ax_sharp.set(xlabel="time t = kη", ylabel="λ_max", title=f"sharpness, η = {eta_large:.3f}")
ax_sharp.legend()
ax_loss.semilogy(times_large, jax.vmap(loss)(gd_large), label="gradient descent")
ax_loss.semilogy(times_large, jax.vmap(loss)(flow_large), "k--", label="the flow")
ax_loss.set(xlabel="time t = kη", title="loss")
ax_loss.legend()
plt.show()
print(
    f"η = {eta_large:.3f} = 2.4/λ_max(0); final distance to the flow "
    f"{float(analysis.trajectory_distance(gd_large, flow_large)[-1]):.2f}; "
    f"final sharpness {float(sharp_gd[-1]):.2f} along GD vs 2/η = {2 / eta_large:.2f}"
)

# %% [markdown]
# ## The central flow
#
# At the edge gradient descent oscillates along the top eigenvector, and the
# oscillation itself pushes the sharpness back down: the gradient of
# $\tfrac12\langle\nabla^2 f, \Sigma\rangle$, with $\Sigma$ the covariance of
# the oscillation, points away from sharper regions. The *central flow* of
# Cohen, Damian, Talwalkar, Kolter & Lee (ICLR 2025) is the ODE of the
# time-averaged iterate:
#
# $$
# \theta'(t) = -\big[\nabla f(\theta) + \tfrac12 \nabla\langle \nabla^2 f(\theta), \Sigma(t)\rangle\big],
# $$
#
# with $\Sigma = U X U^\top$ on the top eigenvectors $U$ and $X \succeq 0$ as
# large as it must be to hold the sharpness at $2/\eta$ (a small
# complementarity problem). Below $2/\eta$, $X = 0$ and it *is* the gradient
# flow. It predicts gradient descent's **time-averaged** loss,
# $f(\theta) + \tfrac12\langle \nabla^2 f, \Sigma\rangle$.
# `analysis.central_flow` integrates it with flowopt's adaptive Runge–Kutta
# and counts its Hessian-vector and third-derivative products.

# %%
central = analysis.central_flow(loss, params0, eta_large, T, num_saves=41, num_eigs=1, lanczos_iterations=20)
window = 20  # steps of gradient descent averaged around each save time
gd_losses = np.asarray(jax.vmap(loss)(gd_large))
save_steps = np.round(np.asarray(central.times) / eta_large).astype(int)
averaged = np.array([gd_losses[max(0, s - window // 2) : s + window // 2].mean() for s in save_steps])
flow_losses = np.asarray(jax.vmap(loss)(analysis.gradient_flow(loss, params0, central.times).params))

fig, (ax_loss, ax_sharp) = plt.subplots(1, 2, figsize=(12, 4))
ax_loss.semilogy(times_large, gd_losses, color="0.8", label="gradient descent")
ax_loss.semilogy(central.times, averaged, "ko", ms=3, label=f"GD, averaged over {window} steps")
ax_loss.semilogy(central.times, flow_losses, "k--", label="gradient flow")
ax_loss.semilogy(central.times, central.predicted_loss, "C3", label="central flow (prediction)")
ax_loss.set(xlabel="time t = kη", title="loss")
ax_loss.legend(fontsize="small")
ax_sharp.plot(times_large[::every], sharp_gd, color="0.6", label="along gradient descent")
ax_sharp.plot(central.times, central.eigenvalues[:, 0], "C3", label="along the central flow")
ax_sharp.axhline(2 / eta_large, color="k", linestyle=":", label="2/η")
ax_sharp.set(xlabel="time t = kη", ylabel="λ_max", title="sharpness")
ax_sharp.legend(fontsize="small")
plt.show()

late = save_steps >= window // 2
early = late & (np.asarray(central.times) <= 12)


def error(prediction, where):
    return float(np.max(np.abs(prediction[where] - averaged[where]) / averaged[where]))


for label, where in (("t ≤ 12", early), ("whole run", late)):
    print(
        f"{label}: largest relative error of the time-averaged loss, central flow "
        f"{error(np.asarray(central.predicted_loss), where):.1%}, gradient flow {error(flow_losses, where):.1%}"
    )
print(f"central flow work: {int(central.gradient_equivalents)} gradient equivalents")

# %% [markdown]
# The gradient flow runs ahead, along ever sharper ground that gradient
# descent cannot follow; the central flow holds the sharpness at $2/\eta$ and
# tracks the average of the oscillating loss while gradient descent stays near
# the edge. Later on this small network gradient descent falls into large
# cycles (the sharpness swings between about $3.7$ and $5.5$ over some 18
# steps), which a 20-step average does not smooth and the central flow does
# not model: there the prediction and the average part. The study
# `flowopt-experiment edge-of-stability` makes the comparison on an MNIST
# network, with the modified flow beside them.
