// The steering the next request carries, as the chat API takes it: {features: [{index, mode, value}], positions}.
// The page only keeps the list; the server checks it (a bad entry comes back as its 400, shown in the page).

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// "#193 add 8", "#5 ablate"
export function describeFeature(f) {
  return f.mode === "ablate" ? `#${f.index} ablate` : `#${f.index} ${f.mode} ${f.value}`;
}

// "#193 add 8, #5 ablate", with " · generated only" when the prompt was left unsteered.
export function describeSpec(spec) {
  const features = spec.features.map(describeFeature).join(", ");
  return spec.positions === "generated" ? `${features} · generated only` : features;
}

export class SteeringSet {
  constructor() {
    this.features = []; // in the order added; one entry per feature (the API refuses a feature twice)
    this.positions = "all";
  }

  // Adds a feature, or replaces its entry when it is already steered. `value` is left out for ablate.
  set(index, mode, value) {
    const f = mode === "ablate" ? { index, mode } : { index, mode, value };
    const at = this.features.findIndex((x) => x.index === index);
    if (at >= 0) this.features[at] = f;
    else this.features.push(f);
  }

  remove(index) {
    this.features = this.features.filter((f) => f.index !== index);
  }

  // The request's `steering` field, or null when nothing is steered (the request is then sent without one).
  spec() {
    if (!this.features.length) return null;
    return { features: this.features.map((f) => ({ ...f })), positions: this.positions };
  }
}

// The active entries, each with a remove button (data-steer-remove = the feature's index).
export function renderSteering(list, none, set, labelOf) {
  list.replaceChildren(...set.features.map((f) => {
    const li = el("li", "steer-entry");
    li.title = labelOf(f.index);
    const remove = el("button", "steer-remove", "×");
    remove.type = "button";
    remove.dataset.steerRemove = String(f.index);
    remove.setAttribute("aria-label", `remove ${describeFeature(f)}`);
    li.append(el("span", "", describeFeature(f)), remove);
    return li;
  }));
  none.hidden = set.features.length > 0;
}
