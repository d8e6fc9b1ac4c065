// The caption service's page: photos dropped or chosen, each captioned with a "copy alt text" button, and
// the camera with live captions drawn over it. Plain script, no library, nothing loaded from elsewhere.
"use strict";

const API = "v1/captions"; // relative, so the page also works behind a proxy's path prefix
const PARALLEL_UPLOADS = 2; // the server queues the rest anyway; this keeps the page's own order
const CAMERA_WIDTH = 640; // frames sent to the server: the model sees at most 640 px across anyway

async function captionOf(blob, name) {
  const form = new FormData();
  form.append("image", blob, name);
  const response = await fetch(API, { method: "POST", body: form });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status}`);
  }
  return body;
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea"); // older browsers, and pages not on https or localhost
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  const done = document.execCommand("copy");
  area.remove();
  if (!done) throw new Error("the browser refused to copy");
}

// Photos -----------------------------------------------------------------------------------------------

const waiting = [];
let uploading = 0;

function addPhotos(files) {
  const results = document.getElementById("results");
  const template = document.getElementById("result-template");
  for (const file of files) {
    if (file.type && !file.type.startsWith("image/")) continue;
    const item = template.content.firstElementChild.cloneNode(true);
    const image = item.querySelector("img");
    image.src = URL.createObjectURL(file);
    image.addEventListener("load", () => URL.revokeObjectURL(image.src), { once: true });
    item.querySelector(".name").textContent = file.name;
    results.prepend(item);
    waiting.push({ file, item });
  }
  pump();
}

function pump() {
  while (uploading < PARALLEL_UPLOADS && waiting.length > 0) {
    const { file, item } = waiting.shift();
    uploading += 1;
    captionPhoto(file, item).finally(() => {
      uploading -= 1;
      pump();
    });
  }
}

async function captionPhoto(file, item) {
  const text = item.querySelector(".caption");
  const button = item.querySelector(".copy");
  try {
    const record = await captionOf(file, file.name);
    text.textContent = record.caption;
    item.querySelector("img").alt = record.caption;
    item.dataset.caption = record.caption;
    button.disabled = false;
    button.addEventListener("click", async () => {
      try {
        await copyText(record.caption);
        button.textContent = "Copied";
        button.dataset.copied = record.caption;
      } catch (error) {
        button.textContent = `Not copied: ${error.message}`;
      }
      setTimeout(() => { button.textContent = "Copy alt text"; }, 2000);
    });
  } catch (error) {
    item.classList.add("failed");
    text.textContent = error.message;
  }
}

function setUpPhotos() {
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  input.addEventListener("change", () => {
    addPhotos(Array.from(input.files));
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addPhotos(Array.from(event.dataTransfer.files));
  });
}

// Camera: one request in flight at a time; the latest caption is drawn over the picture -----------------

const camera = { stream: null, running: false, latest: "" };

function drawCaption() {
  const video = document.getElementById("camera");
  const overlay = document.getElementById("overlay");
  if (!camera.running) return;
  if (video.videoWidth && (overlay.width !== video.videoWidth || overlay.height !== video.videoHeight)) {
    overlay.width = video.videoWidth;
    overlay.height = video.videoHeight;
  }
  const context = overlay.getContext("2d");
  context.clearRect(0, 0, overlay.width, overlay.height);
  if (camera.latest && overlay.width) {
    const size = Math.max(14, Math.round(overlay.width / 28));
    context.font = `${size}px system-ui, sans-serif`;
    const bar = size * 1.8;
    context.fillStyle = "rgba(0, 0, 0, 0.6)";
    context.fillRect(0, overlay.height - bar, overlay.width, bar);
    context.fillStyle = "#fff";
    context.textBaseline = "middle";
    context.fillText(camera.latest, size * 0.6, overlay.height - bar / 2, overlay.width - size * 1.2);
    overlay.dataset.caption = camera.latest;
  }
  requestAnimationFrame(drawCaption);
}

function frameBlob(video) {
  const scale = Math.min(1, CAMERA_WIDTH / video.videoWidth);
  const grab = document.createElement("canvas");
  grab.width = Math.round(video.videoWidth * scale);
  grab.height = Math.round(video.videoHeight * scale);
  grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
  return new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.85));
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function captionLoop() {
  const video = document.getElementById("camera");
  const line = document.getElementById("live-caption");
  while (camera.running) {
    if (video.readyState < 2 || !video.videoWidth) {
      await pause(100);
      continue;
    }
    const blob = await frameBlob(video);
    try {
      const record = await captionOf(blob, "camera.jpg");
      if (!camera.running) break;
      camera.latest = record.caption;
      line.textContent = record.caption;
    } catch (error) {
      line.textContent = error.message;
      await pause(1000);
    }
  }
}

async function startCamera() {
  const video = document.getElementById("camera");
  const line = document.getElementById("live-caption");
  const start = document.getElementById("camera-start");
  const stop = document.getElementById("camera-stop");
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) {
    line.textContent = `No camera: ${error.message}`;
    return;
  }
  video.srcObject = camera.stream;
  await video.play();
  camera.running = true;
  start.disabled = true;
  stop.disabled = false;
  requestAnimationFrame(drawCaption);
  captionLoop();
}

function stopCamera() {
  camera.running = false;
  if (camera.stream) camera.stream.getTracks().forEach((track) => track.stop());
  camera.stream = null;
  document.getElementById("camera").srcObject = null;
  document.getElementById("camera-start").disabled = false;
  document.getElementById("camera-stop").disabled = true;
}

function show(view) {
  const photos = view === "photos";
  document.getElementById("photos").hidden = !photos;
  document.getElementById("camera-view").hidden = photos;
  document.getElementById("show-photos").setAttribute("aria-pressed", String(photos));
  document.getElementById("show-camera").setAttribute("aria-pressed", String(!photos));
  if (photos) stopCamera();
}

document.addEventListener("DOMContentLoaded", () => {
  setUpPhotos();
  document.getElementById("show-photos").addEventListener("click", () => show("photos"));
  document.getElementById("show-camera").addEventListener("click", () => show("camera"));
  document.getElementById("camera-start").addEventListener("click", startCamera);
  document.getElementById("camera-stop").addEventListener("click", stopCamera);
});
