"""Train a small two-layer network on a synthetic "two moons" dataset, with numpy only, and
record the run with replicate: the code and params once, then the weights and metrics each epoch.

    cd examples
    python train.py --lr 0.5 --epochs 10
    replicate ls
    replicate show <id>

The weights are saved as one flat float32 vector in model.npy (see load_weights()).
"""

import argparse

import numpy as np

import replicate


def make_moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles; label 0 for the upper one, 1 for the lower one."""
    t = rng.uniform(0.0, np.pi, n)
    lower = rng.random(n) < 0.5
    x = np.where(lower, 1.0 - np.cos(t), np.cos(t))
    y = np.where(lower, 0.5 - np.sin(t), np.sin(t))
    features = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return features.astype(np.float32), lower.astype(np.float32)


def init_weights(hidden: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w1": (rng.standard_normal((2, hidden)) / np.sqrt(2)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }


def forward(w: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden activations and output logits."""
    h = np.tanh(x @ w["w1"] + w["b1"])
    return h, (h @ w["w2"] + w["b2"])[:, 0]


def evaluate(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Binary cross-entropy and accuracy."""
    _, logits = forward(w, x)
    loss = np.mean(np.logaddexp(0.0, logits) - y * logits)
    accuracy = np.mean((logits > 0) == (y > 0.5))
    return float(loss), float(accuracy)


def sgd_step(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float) -> None:
    h, logits = forward(w, x)
    d_logits = (1.0 / (1.0 + np.exp(-logits)) - y)[:, None] / len(x)
    d_h = (d_logits @ w["w2"].T) * (1.0 - h**2)
    grads = {
        "w2": h.T @ d_logits,
        "b2": d_logits.sum(axis=0),
        "w1": x.T @ d_h,
        "b1": d_h.sum(axis=0),
    }
    for name, grad in grads.items():
        w[name] -= lr * grad.astype(np.float32)


def save_weights(w: dict[str, np.ndarray], path: str) -> None:
    np.save(path, np.concatenate([w[k].ravel() for k in ("w1", "b1", "w2", "b2")]))


def load_weights(path: str, hidden: int) -> dict[str, np.ndarray]:
    flat = np.load(path)
    shapes = {"w1": (2, hidden), "b1": (hidden,), "w2": (hidden, 1), "b2": (1,)}
    w, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        w[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32, help="hidden units")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Records the code in this directory, the params and the environment.
    experiment = replicate.init(path=".", params=vars(args))

    rng = np.random.default_rng(args.seed)
    x, y = make_moons(args.samples, args.noise, rng)
    n_val = len(x) // 5
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    weights = init_weights(args.hidden, rng)

    for epoch in range(args.epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            sgd_step(weights, x_train[batch], y_train[batch], args.lr)

        train_loss, _ = evaluate(weights, x_train, y_train)
        loss, accuracy = evaluate(weights, x_val, y_val)
        print(f"epoch {epoch}: train_loss={train_loss:.4f} loss={loss:.4f} accuracy={accuracy:.3f}")

        save_weights(weights, "model.npy")
        # Stores model.npy (only the chunks not stored before) with the metrics of this epoch.
        experiment.checkpoint(
            path="model.npy",
            step=epoch,
            metrics={"loss": loss, "accuracy": accuracy, "train_loss": train_loss},
            primary_metric=("loss", "minimize"),
        )

    experiment.stop()
    print(f"experiment {experiment.short_id()}: `replicate show {experiment.short_id()}`")


if __name__ == "__main__":
    main()
