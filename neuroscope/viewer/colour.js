// How strongly a token is shaded: opacity 0.05 + 0.95 * log10(1 + 9 * a / max), so 0 -> 0.05 and max -> 1.

export const TOP_RGB = "251, 191, 36"; // amber: a token's strongest feature
export const PICKED_RGB = "14, 165, 233"; // sky: the feature selected in the panel

export function opacity(activation, max) {
  if (!(max > 0) || !(activation > 0)) return 0.05;
  return 0.05 + 0.95 * Math.log10(1 + (9 * Math.min(activation, max)) / max);
}

export function shade(rgb, activation, max) {
  return `rgba(${rgb}, ${opacity(activation, max).toFixed(3)})`;
}
