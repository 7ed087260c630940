"""Synthetic multi-sensor pump data with labelled anomalies, for the demo, tests and simulator.

The sensors follow simple pump physics, so that anomalies are departures from the relations
between sensors and not only from each sensor's own range:

* speed (``rpm``) follows a slow demand cycle per pump;
* ``flow`` is proportional to speed, the pressure rise to speed squared;
* motor ``current`` follows hydraulic power; ``temperature`` follows current with a lag;
* ``vibration`` grows with speed.

Injected anomalies come in short segments per pump, of five kinds: cavitation (suction pressure
and flow drop, vibration rises), bearing wear (vibration and temperature rise), a blocked valve
(flow drops while the outlet pressure rises), a stuck sensor (a reading freezes at an implausible
value) and a spike (one reading jumps). A few normal readings are missing (empty), as real
exports have.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SENSORS = ["rpm", "flow", "pressure_in", "pressure_out", "current", "temperature", "vibration"]
ANOMALY_KINDS = ["cavitation", "bearing_wear", "blocked_valve", "stuck_sensor", "spike"]
STATIONS = ["north", "south", "east"]
FLEET_SEED = 10_007


# The columns of the pipeline that goes with this data (``pipelines/pumps.yaml`` sets the same,
# with comments; a test keeps the two equal). ``anomaly-vae demo`` writes it out when it runs
# where no ``pipelines/pumps.yaml`` is found, as from an installed package.
PUMP_PIPELINE_TEXT = """\
# The pipeline of the pump data that `anomaly-vae demo` generates; every setting not named here
# keeps its default. A commented example of every section: pipelines/pumps.yaml in the
# anomaly-vae repository.
name: pumps
columns:
  id: [event_id]
  timestamp: ts
  entity: pump_id
  label: label
  ignore: [anomaly_kind]
  categorical: [station]
alerts:
  k: 1
  n: 1
  cooldown_s: 0
  resolve_after: 1
"""


def pump_constants(n_pumps: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pump's size (0.9 to 1.1) and demand-cycle phase, fixed by its number alone: pump
    P3 is the same machine in every data set (training rows, an export, the simulator's stream),
    whatever the seed or the number of pumps, so a model trained on one sees the same pumps in
    the others."""
    draws = np.array(
        [np.random.default_rng([FLEET_SEED, i]).uniform(size=2) for i in range(n_pumps)]
    ).reshape(n_pumps, 2)
    return 0.9 + 0.2 * draws[:, 0], 2 * np.pi * draws[:, 1]


def make_pump_data(
    n_rows: int,
    *,
    n_pumps: int = 4,
    anomaly_rate: float = 0.0,
    missing_rate: float = 0.002,
    seed: int = 0,
    start: str = "2026-11-01T00:00:00Z",
    interval_s: float = 10.0,
    first_event_id: int = 0,
    first_row: int = 0,
) -> pd.DataFrame:
    """Rows in time order, pumps interleaved; ``label`` is 1 on anomalous rows.

    Columns: ``event_id``, ``ts`` (ISO 8601, UTC), ``pump_id``, ``station``, the sensors in
    ``SENSORS``, ``label`` and ``anomaly_kind`` (empty on normal rows). ``first_row``: where
    these rows sit in a longer stream (the simulator's blocks), so that the pumps' turns and
    demand cycles go on across blocks instead of starting again. ``seed`` draws the noise and
    the anomalies; the pumps themselves are the same whatever the seed (``pump_constants``).
    """
    if n_rows < 0 or n_pumps < 1:
        raise ValueError("n_rows must be >= 0 and n_pumps >= 1")
    if not 0.0 <= anomaly_rate < 0.5:
        raise ValueError("anomaly_rate must be in [0, 0.5)")
    rng = np.random.default_rng(seed)
    row = first_row + np.arange(n_rows)
    pump = row % n_pumps
    step = row // n_pumps
    t0 = pd.Timestamp(start)
    ts = t0 + pd.to_timedelta(np.arange(n_rows) * (interval_s / n_pumps), unit="s")

    # Per-pump constants: each pump is a little different, and the same in every data set.
    sizes, phases = pump_constants(n_pumps)
    size = sizes[pump]
    phase = phases[pump]
    station_of_pump = np.array([STATIONS[i % len(STATIONS)] for i in range(n_pumps)], dtype=object)

    cycle = np.sin(2 * np.pi * step / 720.0 + phase) + 0.3 * np.sin(2 * np.pi * step / 97.0 + phase)
    rpm = 1600 + 150 * cycle + rng.normal(0, 8, n_rows)
    speed = rpm / 1600.0
    flow = 120 * size * speed + rng.normal(0, 1.5, n_rows)
    pressure_in = 1.2 - 0.002 * (flow - 120) + rng.normal(0, 0.02, n_rows)
    pressure_out = pressure_in + 4.5 * speed**2 / size + rng.normal(0, 0.05, n_rows)
    hydraulic_kw = flow * (pressure_out - pressure_in) / 36.0
    current = 8 + 2.2 * hydraulic_kw / size + rng.normal(0, 0.3, n_rows)
    temperature = 35 + 0.6 * current + rng.normal(0, 0.4, n_rows)
    vibration = 1.2 + 1.1 * speed**2 + np.abs(rng.normal(0, 0.12, n_rows))

    values = {
        "rpm": rpm,
        "flow": flow,
        "pressure_in": pressure_in,
        "pressure_out": pressure_out,
        "current": current,
        "temperature": temperature,
        "vibration": vibration,
    }
    label = np.zeros(n_rows, dtype=np.int64)
    kind = np.full(n_rows, "", dtype=object)
    if anomaly_rate > 0 and n_rows > 0:
        _inject(values, label, kind, pump, n_pumps, anomaly_rate, rng)

    frame = pd.DataFrame(
        {
            "event_id": np.arange(first_event_id, first_event_id + n_rows, dtype=np.int64),
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%f").str.slice(0, 23) + "Z",
            "pump_id": np.char.add("P", (pump + 1).astype(str)).astype(object),
            "station": station_of_pump[pump],
        }
    )
    for name in SENSORS:
        frame[name] = np.round(values[name], 4)
    if missing_rate > 0 and n_rows > 0:
        for name in ("temperature", "vibration", "pressure_in"):
            holes = (rng.random(n_rows) < missing_rate) & (label == 0)
            frame.loc[holes, name] = np.nan
    frame["label"] = label
    frame["anomaly_kind"] = kind
    return frame


def _inject(
    values: dict[str, np.ndarray],
    label: np.ndarray,
    kind: np.ndarray,
    pump: np.ndarray,
    n_pumps: int,
    rate: float,
    rng: np.random.Generator,
) -> None:
    n = len(label)
    mean_len = 4.0
    n_events = max(1, round(n * rate / mean_len))
    for _ in range(n_events):
        what = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
        length = int(rng.integers(1, 8)) if what != "spike" else 1
        p = int(rng.integers(n_pumps))
        own = np.flatnonzero(pump == p)  # the pump's rows, in time order
        if len(own) == 0:
            continue
        first = int(rng.integers(len(own)))
        rows = own[first : first + length]
        k = len(rows)
        if what == "cavitation":
            values["pressure_in"][rows] -= rng.uniform(0.35, 0.7, k)
            values["flow"][rows] *= rng.uniform(0.7, 0.85, k)
            values["vibration"][rows] += rng.uniform(1.5, 3.0, k)
        elif what == "bearing_wear":
            values["vibration"][rows] += rng.uniform(1.0, 2.5, k)
            values["temperature"][rows] += rng.uniform(4.0, 9.0, k)
        elif what == "blocked_valve":
            values["flow"][rows] *= rng.uniform(0.45, 0.7, k)
            values["pressure_out"][rows] += rng.uniform(0.8, 1.5, k)
        elif what == "stuck_sensor":
            sensor = ["flow", "pressure_out", "current"][int(rng.integers(3))]
            values[sensor][rows] = values[sensor][rows[0]] * rng.choice([0.0, 1.6])
        else:  # spike
            sensor = SENSORS[int(rng.integers(len(SENSORS)))]
            values[sensor][rows] *= rng.choice([0.4, 1.8])
        label[rows] = 1
        kind[rows] = what
