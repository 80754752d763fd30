// The lab page: shows the lab's progress, keeps the lab awake while the learner works, and tells the
// broker when the learner leaves (tab closed, or no keyboard/mouse input for the idle limit), so the
// lab is suspended within seconds instead of running on at the institution's cost.
(function () {
  const root = document.getElementById("lab");
  const labId = root.dataset.labId;
  const keepaliveMs = Number(root.dataset.keepalive) * 1000;
  const idleLimitMs = Number(root.dataset.idleDisconnect) * 1000;
  const labels = JSON.parse(root.dataset.labels);

  let lastInput = Date.now();
  let connected = true;

  function post(path) {
    return fetch(`/api/labs/${labId}/${path}`, { method: "POST", credentials: "same-origin" });
  }
  function leave() {
    if (connected) navigator.sendBeacon(`/api/labs/${labId}/leave`);
    connected = false;
  }
  async function refresh() {
    const response = await fetch(`/api/labs/${labId}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const lab = await response.json();
    document.getElementById("state").textContent = labels[lab.state] || lab.state;
    document.getElementById("progress").value = lab.progress;
    document.getElementById("message").textContent = lab.message;
    document.getElementById("resume").hidden = !["suspended", "failed"].includes(lab.state) && connected;
  }
  ["keydown", "mousemove", "mousedown", "wheel", "touchstart"].forEach((name) =>
    window.addEventListener(name, () => { lastInput = Date.now(); }, { passive: true }));
  window.addEventListener("pagehide", leave);
  setInterval(() => {
    if (!connected) return;
    if (Date.now() - lastInput > idleLimitMs) {
      leave();
      document.getElementById("message").textContent = "Disconnected after a period of inactivity.";
      return;
    }
    post("keepalive");
  }, keepaliveMs);
  post("keepalive");
  refresh();
  setInterval(refresh, 2000);
})();
