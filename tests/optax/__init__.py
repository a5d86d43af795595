"""The optax contract: every optimizer under optax's checks, inside optax's wrappers and chains (flowopt.wrappers)."""
