// guardkit's page: pick or drop a photo, protect it (POST /v1/protect), compare, verify (POST /v1/verify), download.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let photo = null;
  let downloadUrl = null;

  function show(text) { $("status").textContent = text; }
  function fail(text) { $("error").textContent = text; $("error").hidden = false; show(""); }
  function headers() {
    const token = $("token").value.trim();
    const h = { "Accept": "application/json" };
    if (token) h["Authorization"] = "Bearer " + token;
    return h;
  }
  async function post(path, form) {
    const response = await fetch(path, { method: "POST", body: form, headers: headers() });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error : "the server answered " + response.status;
      throw new Error(response.status === 401 ? message + " (enter it under More options)" : message);
    }
    return body;
  }
  function choose(file) {
    if (!file) return;
    photo = file;
    $("drop-text").textContent = file.name + " (" + Math.round(file.size / 1024) + " KB)";
    $("protect").disabled = false;
    $("error").hidden = true;
  }
  function fromBase64(text, type) {
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: type });
  }
  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }
  function fill(rows) {
    const body = $("verify-table").querySelector("tbody");
    body.textContent = "";
    for (const r of rows) {
      const tr = document.createElement("tr");
      cell(tr, r.face_model); cell(tr, r.crop === "template" ? "ArcFace template" : "its own"); cell(tr, r.purify);
      cell(tr, r.distance === null ? "-" : r.distance.toFixed(3));
      cell(tr, String(r.threshold));
      cell(tr, r.decision, r.decision.replace(" ", "-"));
      body.appendChild(tr);
    }
  }
  async function protect(event) {
    event.preventDefault();
    if (!photo) return;
    $("error").hidden = true;
    $("result").hidden = true;
    $("protect").disabled = true;
    const started = Date.now();
    const timer = setInterval(() => show("Protecting... " + Math.round((Date.now() - started) / 1000) + " s"), 1000);
    show("Protecting...");
    try {
      const form = new FormData();
      form.append("file", photo, "photo");
      form.append("strength", $("strength").value);
      if ($("steps").value !== "") form.append("steps", $("steps").value);
      if ($("cloak").files.length) form.append("cloak", $("cloak").files[0], "cloak");
      const result = await post("/v1/protect", form);
      const blob = fromBase64(result.image_base64, result.media_type);
      if (downloadUrl) URL.revokeObjectURL(downloadUrl);
      downloadUrl = URL.createObjectURL(blob);
      $("before").src = URL.createObjectURL(photo);
      $("after").src = downloadUrl;
      $("download").href = downloadUrl;
      const stem = (photo.name || "photo").replace(/\.[^.]*$/, "");
      $("download").download = stem + ".protected." + (result.media_type === "image/png" ? "png" : "jpg");
      $("numbers").textContent = result.faces + " face(s), largest pixel change " + result.linf_255 +
        "/255, PSNR " + (result.psnr === null ? "-" : result.psnr.toFixed(1)) + " dB, " + result.seconds.toFixed(1) + " s";
      const stronger = result.stronger;
      $("advice").hidden = !stronger;
      $("advice").textContent = stronger ? "Face recognition still matches this photo to the original at this strength: " +
        "the \"" + stronger.strength + "\" strength (" + stronger.eps_255 + "/255) protects more." : "";
      fill(Object.entries(result.face_models).map(([name, m]) => ({ face_model: name, purify: "protection",
        distance: m.distance, threshold: m.threshold, decision: m.match === null ? "no face" : (m.match ? "match" : "no match") })));
      $("result").hidden = false;
      show("Protected. Checking it against your photo...");
      const check = new FormData();
      check.append("file", blob, "protected");
      check.append("reference", photo, "original");
      const verified = await post("/v1/verify", check);
      fill(verified.rows);
      show("Done.");
    } catch (e) {
      fail(e.message);
    } finally {
      clearInterval(timer);
      $("protect").disabled = false;
    }
  }
  function slide() { $("after-clip").style.clipPath = "inset(0 0 0 " + $("slider").value + "%)"; }

  document.addEventListener("DOMContentLoaded", () => {
    $("file").addEventListener("change", () => choose($("file").files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
    $("form").addEventListener("submit", protect);
    $("slider").addEventListener("input", slide);
    $("toggle").addEventListener("click", () => {
      const showingAfter = $("slider").value !== "100";
      $("slider").value = showingAfter ? "100" : "0";
      $("toggle").textContent = showingAfter ? "Show after" : "Show before";
      slide();
    });
  });
})();
