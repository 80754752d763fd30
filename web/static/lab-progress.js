// The start-up progress (Requested → Preparing → Starting desktop → Ready) and the readable error
// states of a lab, each with what to do next.

export const STAGES = ["Requested", "Preparing", "Starting desktop", "Ready"];
const STARTING = new Set(["requested", "provisioning", "resuming"]);

/** Which stage a lab is at: its state, and within provisioning/resuming its progress. */
export function stageOf(lab) {
  if (lab.state === "running") return 3;
  if (lab.state === "requested") return 0;
  return Number(lab.progress) >= 50 ? 2 : 1;
}

/** True while the lab is on its way up (the progress panel is worth showing). */
export function isStarting(lab) {
  return STARTING.has(lab.state);
}

/** Update the stage list, the bar and its text for `lab`; `detail` replaces the server's message. */
export function renderProgress(elements, lab, detail) {
  const stage = stageOf(lab);
  const percent = Math.max(0, Math.min(100, Math.round(Number(lab.progress) || 0)));
  elements.stages.querySelectorAll("li").forEach((item) => {
    const index = Number(item.dataset.stage);
    item.classList.toggle("done", index < stage);
    item.classList.toggle("current", index === stage);
    if (index === stage) item.setAttribute("aria-current", "step");
    else item.removeAttribute("aria-current");
  });
  elements.bar.value = percent;
  elements.bar.setAttribute("aria-valuetext", `${STAGES[stage]}, ${percent} percent`);
  elements.percent.textContent = `${percent} %`;
  const queued = lab.queue ? lab.message : ""; // waiting for a GPU: the place in line says it all
  setText(elements.text, detail || queued || [`${STAGES[stage]} — ${percent} %.`, lab.message].filter(Boolean).join(" "));
}

/**
 * What went wrong with a lab and what the learner can do, or null when nothing did.
 * `action` names the launch form's button ("Try again", "Start a new lab"); `reset` offers Reset lab.
 */
export function problemOf(lab, watch) {
  const detail = lab.message ? ` (${lab.message.replace(/\.$/, "")})` : "";
  if (lab.state === "deleted" || lab.state === "deleting" || lab.error_kind === "deleted") {
    return watch
      ? { title: "This lab was removed", advice: "The learner can start a new one from their course page." }
      : {
          title: "This lab was removed",
          advice: "Its machine and the work on it are gone. Press “Start a new lab” for a fresh copy, "
            + "or contact your instructor if you did not expect this.",
          action: lab.state === "deleted" ? "Start a new lab" : "",
        };
  }
  if (lab.state !== "failed") return null;
  if (watch) return { title: "This lab failed", advice: `The learner's lab could not be started${detail}.` };
  if (lab.error_kind === "capacity") {
    return {
      title: "No lab machine is free right now",
      advice: "Every lab machine for this activity is in use. Press “Try again” in a few minutes; "
        + "if this keeps happening, tell your instructor.",
      action: "Try again",
    };
  }
  return {
    title: "Your lab could not be started",
    advice: `The lab system reported a problem${detail}. Press “Try again”. If it fails again, use “Reset lab” `
      + "to start from a fresh copy, or contact your instructor.",
    action: "Try again",
    reset: true,
  };
}

/** A problem reading the lab itself (HTTP status of GET /api/labs/<id>). */
export function problemOfStatus(status, body) {
  if (status === 401) {
    return { title: "You are signed out", advice: "Open this lab again from your course page." };
  }
  if (status === 404) {
    return { title: "This lab does not exist or is not yours", advice: "Open the lab again from your course page." };
  }
  return null;
}

export function renderProblem(elements, problem) {
  elements.panel.hidden = !problem;
  if (!problem) return;
  setText(elements.title, problem.title);
  setText(elements.advice, problem.advice);
}

/** Change a live region's text only when it differs, so screen readers do not repeat it. */
export function setText(element, text) {
  if (element && element.textContent !== text) element.textContent = text;
}
