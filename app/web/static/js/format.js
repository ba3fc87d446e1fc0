// Sizes, rates and durations as people read them.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(count) {
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(value < 10 ? 2 : 1) : value} ${UNITS[unit]}`;
}

export function rate(bytesPerSecond) {
  return `${bytes(Math.round(bytesPerSecond))}/s`;
}

export function duration(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  const whole = Math.max(0, Math.round(seconds));
  if (whole < 60) return `${whole} s`;
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  return `${Math.floor(whole / 3600)} h ${Math.floor((whole % 3600) / 60)} min`;
}

export function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** Bytes per second over the last few seconds of progress reports. */
export class SpeedMeter {
  constructor(windowMs = 5000) {
    this.windowMs = windowMs;
    this.samples = [];
  }

  add(done) {
    const now = performance.now();
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > this.windowMs) this.samples.shift();
  }

  reset() {
    this.samples = [];
  }

  get bytesPerSecond() {
    if (this.samples.length < 2) return 0;
    const [startTime, startBytes] = this.samples[0];
    const [endTime, endBytes] = this.samples[this.samples.length - 1];
    return endTime > startTime ? ((endBytes - startBytes) * 1000) / (endTime - startTime) : 0;
  }
}
