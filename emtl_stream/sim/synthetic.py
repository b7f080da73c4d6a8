"""A seeded synthetic EMG armband: a fake device for tests, the demo and benchmarks.

Model
-----
A few muscle *sources* lie at fixed angles around the forearm. Each source is
band-limited Gaussian noise (a 4th-order Butterworth band-pass, 20-150 Hz capped
below Nyquist, filter state carried across calls), scaled by an activation level
that depends on the performed class and follows class changes with a first-order
lag (about 60 ms, as a muscle does not switch instantly). The sources reach a
ring of equally spaced electrodes through a smooth von-Mises spatial profile

    G[c, m] = exp(kappa * (cos(2 pi (c - shift - p_m) / n_channels) - 1)),

with ``p_m`` the muscle position in electrode spacings. Rotating the armband by
``shift`` electrode spacings is therefore exactly a circular roll of the mixing
matrix for integer shifts, and smoothly in between for fractional ones. Each
electrode adds its own white noise.

The spatial concentration ``kappa`` is set in angle, not in electrodes, so a
320-electrode ring sees the same muscles at a finer spatial resolution.
Everything is plain numpy (and scipy for the band-pass); no I/O, no threads.
"""

from __future__ import annotations

import numpy as np
from scipy import integrate, signal

from .._checks import check_type, ensure_float, ensure_int

DEFAULT_CLASSES = ("rest", "open", "close", "flex", "ext")
MAX_CHANNELS = 320
MAX_FS = 2048.0 * 4
LAG_S = 0.06  # activation time constant: windows just after a class change are mixed
REST_LEVEL = 0.04  # residual tone at rest, so "rest" is not a perfectly flat line


class SyntheticArmband:
    """Seeded generator of multi-channel surface EMG on a ring of electrodes.

    Parameters
    ----------
    n_channels : int
        Electrodes on the ring (1 to 320).
    fs : float
        Sampling rate in Hz.
    classes : sequence of str
        Class names; the first one is the resting class (only residual tone).
    seed : int
        Seed of everything random: source positions, class patterns and noise.
    shift : float
        Armband rotation in electrode spacings (any real number).
    noise_level : float
        Standard deviation of the per-electrode white noise, relative to a fully
        active muscle (whose band-limited signal has unit standard deviation).
    n_sources : int, optional
        Number of muscle sources (default ``max(6, n_classes + 1)``).
    kappa : float
        von-Mises concentration of a muscle's spatial profile (in angle).
    gain : float
        Electrode gain (skin contact): every output sample, noise included, is
        multiplied by it.

    Attributes
    ----------
    class_names : tuple of str
    mixing : ndarray of shape (n_channels, n_sources)
        Current source-to-electrode gains (depends on ``shift``).
    activation : ndarray of shape (n_classes, n_sources)
        Target activation of each muscle for each class.
    """

    def __init__(self, n_channels: int = 8, fs: float = 1000.0, classes=DEFAULT_CLASSES,
                 seed: int = 0, shift: float = 0.0, noise_level: float = 0.05,
                 n_sources: int | None = None, kappa: float = 3.0,
                 gain: float = 1.0):
        self.n_channels = ensure_int(n_channels, "n_channels", 1, MAX_CHANNELS)
        self.fs = ensure_float(fs, "fs", minimum=50.0, maximum=MAX_FS)
        check_type(classes, (list, tuple), "classes")
        names = tuple(str(c) for c in classes)
        if len(names) < 1 or len(set(names)) != len(names):
            raise ValueError(f"classes must be distinct names, at least one, got {names!r}.")
        self.class_names = names
        self.seed = ensure_int(seed, "seed", 0)
        self.noise_level = ensure_float(noise_level, "noise_level", minimum=0.0)
        self.kappa = ensure_float(kappa, "kappa", minimum=0.0, strict_min=True)
        n_src = max(6, len(names) + 1) if n_sources is None else n_sources
        self.n_sources = ensure_int(n_src, "n_sources", 1)

        ss = np.random.SeedSequence(self.seed)
        layout_ss, src_ss, noise_ss = ss.spawn(3)
        layout = np.random.default_rng(layout_ss)
        # Muscles spread around the ring with some jitter, in electrode units.
        base = np.arange(self.n_sources) * (self.n_channels / self.n_sources)
        jitter = layout.uniform(-0.2, 0.2, self.n_sources) * (self.n_channels / self.n_sources)
        self._positions = (base + jitter) % self.n_channels
        self.activation = self._class_patterns(layout)
        self._gain = layout.uniform(0.7, 1.3, self.n_sources)

        self._src_rng = np.random.default_rng(src_ss)
        self._noise_rng = np.random.default_rng(noise_ss)
        hi = min(150.0, 0.45 * self.fs)
        self._sos = signal.butter(4, [20.0, hi], btype="bandpass", fs=self.fs, output="sos")
        self._zi = np.zeros((self._sos.shape[0], 2, self.n_sources))
        self._warm_up()
        self._level = self.activation[0].copy()
        self._src_scale = 1.0
        self._src_scale = self._calibrate_scale()
        self.shift = 0.0
        self.mixing = self._mixing(0.0)
        self.set_shift(shift)
        self.gain = 1.0
        self.set_gain(gain)

    # ------------------------------------------------------------------ setup
    def _class_patterns(self, layout) -> np.ndarray:
        """One activation vector per class.

        Rest is quiet; each other class has a dominant muscle, a partner at 40-60 %
        and a little background.
        """
        k, m = len(self.class_names), self.n_sources
        act = np.full((k, m), REST_LEVEL)
        for i in range(1, k):
            main = (i - 1) % m
            partner = (main + 1 + (i // m)) % m
            act[i] = layout.uniform(0.05, 0.15, m)
            act[i, main] = layout.uniform(0.85, 1.0)
            act[i, partner] = layout.uniform(0.4, 0.6)
        return act

    def _warm_up(self) -> None:
        # Run the band-pass on a short noise burst so its state is stationary.
        n = int(0.2 * self.fs)
        _, self._zi = signal.sosfilt(self._sos, self._src_rng.standard_normal((n, self.n_sources)),
                                     axis=0, zi=self._zi)

    def _calibrate_scale(self) -> float:
        # The band-pass removes most of the white noise's power; rescale so a fully
        # active muscle has unit standard deviation. Computed from the filter's
        # response (no random draws, so the output stream is unaffected).
        w, h = signal.sosfreqz(self._sos, worN=4096, fs=self.fs)
        # scipy's trapezoid: np.trapezoid exists only from NumPy 2.0 (pyproject allows 1.24)
        power = integrate.trapezoid(np.abs(h) ** 2, w) / (self.fs / 2)
        return float(1.0 / np.sqrt(max(power, 1e-12)))

    def _mixing(self, shift: float) -> np.ndarray:
        c = np.arange(self.n_channels, dtype=float)[:, None]
        ang = 2.0 * np.pi * (c - shift - self._positions[None, :]) / self.n_channels
        return np.exp(self.kappa * (np.cos(ang) - 1.0)) * self._gain[None, :]

    # ------------------------------------------------------------------ public
    def set_shift(self, shift: float) -> None:
        """Rotate the armband to ``shift`` electrode spacings.

        Parameters
        ----------
        shift : float
            Absolute rotation in electrode spacings (any real; not added to the last).
        """
        self.shift = ensure_float(shift, "shift")
        self.mixing = self._mixing(self.shift)

    def set_gain(self, gain: float) -> None:
        """Set the electrode gain; noise is scaled with the signal.

        Parameters
        ----------
        gain : float
            Amplitude factor of every electrode, > 0 (1 = as trained).
        """
        self.gain = ensure_float(gain, "gain", minimum=0.0, strict_min=True)

    def class_index(self, class_) -> int:
        """Index of a class given by name or index.

        Parameters
        ----------
        class_ : str or int
            A name from ``class_names`` or an index into it.

        Returns
        -------
        int

        Raises
        ------
        ValueError
            Naming the valid names or the index range.
        """
        if isinstance(class_, (int, np.integer)) and not isinstance(class_, bool):
            if 0 <= int(class_) < len(self.class_names):
                return int(class_)
            raise ValueError(f"class_ index {class_} is out of range "
                             f"0..{len(self.class_names) - 1}.")
        if class_ in self.class_names:
            return self.class_names.index(class_)
        raise ValueError(f"class_ must be one of {list(self.class_names)}, got {class_!r}.")

    def generate(self, n_samples: int, class_) -> np.ndarray:
        """Generate the next ``n_samples`` samples while performing ``class_``.

        State (filter memory, activation level, random streams) carries over, so
        successive calls give one continuous signal; splitting a call into several
        with the same class gives the same samples (to floating-point rounding).

        Parameters
        ----------
        n_samples : int
        class_ : str or int
            Class name or index.

        Returns
        -------
        ndarray of shape (n_samples, n_channels), float32
        """
        n = ensure_int(n_samples, "n_samples", 0)
        target = self.activation[self.class_index(class_)]
        if n == 0:
            return np.empty((0, self.n_channels), np.float32)
        raw = self._src_rng.standard_normal((n, self.n_sources))
        src, self._zi = signal.sosfilt(self._sos, raw, axis=0, zi=self._zi)
        # First-order lag towards the target level, in closed form so the result
        # does not depend on how the samples are split into calls.
        decay = np.exp(-np.arange(1, n + 1, dtype=float) / (LAG_S * self.fs))[:, None]
        level = target[None, :] + (self._level - target)[None, :] * decay
        self._level = level[-1].copy()
        src *= level * self._src_scale
        out = src @ self.mixing.T
        if self.noise_level > 0:
            out += self.noise_level * self._noise_rng.standard_normal((n, self.n_channels))
        if self.gain != 1.0:
            out *= self.gain
        return out.astype(np.float32)
