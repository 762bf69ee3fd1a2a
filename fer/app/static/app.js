// fer-serve's page: send an image (or webcam frames) to /v1/predict, draw each face's box in its
// emotion's colour and a bar per emotion. Colours and class names come from /v1/model (the one palette).
"use strict";

const $ = (id) => document.getElementById(id);
const WEBCAM_INTERVAL_MS = 250;   // at most 4 frames a second, and never two requests at once
const SMOOTHING = 0.6;            // webcam: weight of a face's previous probabilities
let classes = [], colors = {}, webcamStream = null, inFlight = false, previous = [];

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  const info = await (await fetch("/v1/model")).json();
  classes = info.classes;
  colors = info.colors;
  const card = info.card;
  const figures = card && card.public_test ? ` · PublicTest accuracy ${card.public_test.accuracy}, macro-F1 ${card.public_test.macro_f1}` : "";
  $("model").textContent = `model: ${info.model.checkpoint.split("/").pop()} on ${info.model.runtime}${figures}`;
}

async function predict(blob) {
  const form = new FormData();
  form.append("image", blob, "upload");
  const response = await fetch("/v1/predict", { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// webcam faces: average each face's probabilities with the nearest face of the previous frame
function smooth(faces) {
  const centre = (f) => [(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2];
  for (const face of faces) {
    const [x, y] = centre(face);
    const size = face.box[2] - face.box[0];
    const match = previous.find((p) => Math.hypot(centre(p)[0] - x, centre(p)[1] - y) < size / 2);
    if (match) {
      for (const name of classes) {
        face.probabilities[name] = SMOOTHING * match.probabilities[name] + (1 - SMOOTHING) * face.probabilities[name];
      }
      face.label = classes.reduce((a, b) => (face.probabilities[a] >= face.probabilities[b] ? a : b));
    }
  }
  previous = faces;
  return faces;
}

function show(result) {
  const { width, height } = result.image;
  $("boxes").replaceChildren(...result.faces.map((face, i) => {
    const [x1, y1, x2, y2] = face.box;
    const box = document.createElement("div");
    box.className = "box";
    Object.assign(box.style, {
      left: `${(100 * x1) / width}%`, top: `${(100 * y1) / height}%`,
      width: `${(100 * (x2 - x1)) / width}%`, height: `${(100 * (y2 - y1)) / height}%`,
      borderColor: colors[face.label],
    });
    const tag = document.createElement("span");
    tag.textContent = `#${i + 1} ${face.label}`;
    tag.style.background = colors[face.label];
    box.append(tag);
    return box;
  }));
  $("faces").replaceChildren(...result.faces.map((face, i) => {
    const card = document.createElement("article");
    card.className = "face";
    const title = document.createElement("h2");
    title.textContent = `Face #${i + 1}: ${face.label}`;
    card.append(title);
    for (const name of classes) {
      const p = face.probabilities[name];
      const row = document.createElement("div");
      row.className = "row";
      row.innerHTML = `<span>${name}</span><div class="track"><div class="bar"></div></div><span>${(100 * p).toFixed(1)}%</span>`;
      Object.assign(row.querySelector(".bar").style, { width: `${100 * p}%`, background: colors[name] });
      card.append(row);
    }
    return card;
  }));
}

async function analyseFile(file) {
  if (!file) return;
  stopWebcam();
  $("picture").src = URL.createObjectURL(file);
  $("picture").hidden = false;
  $("hint").hidden = true;
  setStatus("analysing…");
  try {
    const result = await predict(file);
    show(result);
    setStatus(result.faces.length ? `${result.faces.length} face(s)` : "no face found");
  } catch (error) {
    $("boxes").replaceChildren();
    $("faces").replaceChildren();
    setStatus(error.message, true);
  }
}

async function webcamTick() {
  if (!webcamStream || inFlight) return;
  const video = $("video");
  if (!video.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  inFlight = true;
  try {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
    const result = await predict(blob);
    result.faces = smooth(result.faces);
    show(result);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    inFlight = false;
  }
}
async function startWebcam() {
  try {
    webcamStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) {
    setStatus(`webcam unavailable: ${error.message}`, true);
    return;
  }
  $("picture").hidden = true;
  $("hint").hidden = true;
  $("video").srcObject = webcamStream;
  $("video").hidden = false;
  $("webcam").textContent = "Stop the webcam";
  setStatus("webcam: analysing up to 4 frames a second");
  previous = [];
  webcamStream.timer = setInterval(webcamTick, WEBCAM_INTERVAL_MS);
}

function stopWebcam() {
  if (!webcamStream) return;
  clearInterval(webcamStream.timer);
  webcamStream.getTracks().forEach((track) => track.stop());
  webcamStream = null;
  $("video").hidden = true;
  $("webcam").textContent = "Start the webcam";
}

$("file").addEventListener("change", (event) => analyseFile(event.target.files[0]));
$("webcam").addEventListener("click", () => (webcamStream ? stopWebcam() : startWebcam()));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  analyseFile(event.dataTransfer.files[0]);
});
loadModel().catch((error) => setStatus(`cannot reach the server: ${error.message}`, true));
