// Web viewer for the segmentation service: one image in, its segmentation drawn over it.
//
// Data flow for one image (each step is one request with the original file bytes):
//   0. POST probe                             → its channels, z/t planes, pixel size, warnings; when
//                                               the file needs a choice (several channels, a stack)
//                                               the page offers pickers and waits for it
//   1. POST ui/preview                        → 8-bit RGB PNG the browser can show (TIFF, 16-bit…)
//   2. POST segment?output=probability&bits=8 → probability map, thresholded here in the browser,
//                                               so the threshold slider needs no new upload
//   3. POST segment?output=geojson            → one polygon per nucleus: the labels view and the count
// After the threshold slider stops moving, step 3 is repeated with &threshold=… (debounced) so
// the object count always belongs to the threshold shown. Every request after the probe carries
// the chosen channel / z / t (or project=max|sum). Zoom and pan are a CSS transform of the stage.
//
// Large images (more pixels than GET ui/config's job_above_pixels, judged from the probe: the
// width × height the server read from the file's header) send steps 2 and 3 and the downloads as
// jobs instead: POST jobs?… (the same options) → 202, GET jobs/{id} every JOB_POLL_MS for the
// progress bar (tiles done / total, and an ETA), GET jobs/{id}/result (the bytes POST segment would
// have answered), DELETE jobs/{id} to free the server's disk. Cancel (or a new file) DELETEs the
// running job, which stops its tiles on the server.
//
// A large file (past GET ui/config's max_upload_bytes, or over STORE_ABOVE_BYTES) is sent ONCE:
// stored on the server as a resumable upload (tus 1.0: POST uploads with Upload-Length, then PATCH
// uploads/{id} piece by piece, PIECE_BYTES at a time; a piece lost with the connection is sent
// again from the offset HEAD uploads/{id} gives, up to RESUME_TRIES times in a row, waiting longer
// each time), with a progress bar and Cancel; every request above then names it with upload=<id>
// and sends no body. A new file (or leaving the page) DELETEs it.
//
// A z-stack also offers its nuclei in 3-D: POST jobs?output=labels3d (every slice, no z=), polled
// the same way, then GET jobs/{id}/result (a summary: the count) and jobs/{id}/files.zip (the 3-D
// labels and the table), saved as a download, then DELETE.
"use strict";

const KEY_STORAGE = "unet.apiKey";
const REFETCH_DELAY_MS = 600;
const MASK_RGB = [0, 230, 118];
/** Until GET ui/config answers (or if it cannot): unet-segment's --job-above default. */
const DEFAULT_JOB_ABOVE_PIXELS = 4096 * 4096;
const JOB_POLL_MS = 500;
/** Files larger than this are stored once rather than sent with each of the page's requests. */
const STORE_ABOVE_BYTES = 32 * 1024 * 1024;
/** Bytes of a stored file sent per request: what a lost connection costs at most. */
const PIECE_BYTES = 8 * 1024 * 1024;
/** Pieces lost in a row before storing gives up (each retried after 1, 2, 4, 8… s). */
const RESUME_TRIES = 5;

const $ = (id) => document.getElementById(id);

const state = {
  file: null,
  stem: "",
  width: 0,
  height: 0,
  prob: null,            // Uint8Array, H*W, probability × 255
  features: [],          // GeoJSON features at state.countThreshold
  countThreshold: null,  // null: the model's own threshold
  modelThreshold: 0.5,
  threshold: 0.5,        // the slider's value
  split: "",             // the request's split option; "": the model's default
  diameter: "",          // typical nucleus diameter in px; "": the server estimates it
  polarity: "bright",    // dark: nuclei darker than their background (bright field, H&E)
  run: 0,                // bumped per upload: answers for an older upload are dropped
  countRequest: 0,       // bumped per geojson request: only the newest one counts
  refetchTimer: null,
  probe: null,           // POST probe's answer for the current file
  plane: { channel: "", z: "", t: "" },  // the pickers; z may be "max" or "sum" (project=)
  warnings: [],          // from the probe and the last segmentation (X-Warnings)
  jobsOn: true,          // the server runs jobs (GET ui/config)
  jobAbove: DEFAULT_JOB_ABOVE_PIXELS,
  useJobs: false,        // this file goes through jobs (its pixels are over jobAbove)
  jobs: new Map(),       // purpose ("segment", "objects", "download-mask"…) → the job running for it
  uploads: new Set(),    // XMLHttpRequests still sending the file (Cancel aborts them)
  maxUpload: null,       // bytes one request may carry (GET ui/config); null: unknown
  storedOn: false,       // the server stores files once (POST uploads)
  maxStored: null,       // bytes a stored file may have
  stored: null,          // the current file's stored upload id, once stored
};

// --- HTTP ----------------------------------------------------------------------------------------

/** An RFC 9457 problem (or anything else that failed) as a readable message. */
class RequestFailed extends Error {
  constructor(status, problem, fallback) {
    const title = (problem && problem.title) || fallback || "Request failed";
    const detail = problem && problem.detail ? `: ${problem.detail}` : "";
    super(status ? `${title} (HTTP ${status})${detail}` : `${title}${detail}`);
    this.status = status;
    this.problem = problem;
  }
}

async function problemOf(xhr) {
  try {
    const text = await xhr.response.text();
    const body = JSON.parse(text);
    return typeof body === "object" && body ? body : null;
  } catch (_) {
    return null;
  }
}

let keyPrompt = null; // one dialog at a time, shared by concurrent 401s

function askForKey() {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  keyPrompt = new Promise((resolve) => {
    $("key-input").value = "";
    dialog.addEventListener("close", () => {
      const key = dialog.returnValue === "ok" ? $("key-input").value.trim() : "";
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      keyPrompt = null;
      resolve(key || null);
    }, { once: true });
    dialog.showModal();
  });
  return keyPrompt;
}

/**
 * One XMLHttpRequest (for upload progress), answered as a Blob.
 * A 401 asks for the API key (once; again only if the stored key is refused) and retries.
 */
function xhrOnce(method, url, body, { contentType, headers, onOpen, onUploadProgress, onUploaded } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    if (onOpen) onOpen(xhr);
    xhr.responseType = "blob";
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) xhr.setRequestHeader("X-API-Key", key);
    if (contentType) xhr.setRequestHeader("Content-Type", contentType);
    for (const [name, value] of Object.entries(headers || {})) xhr.setRequestHeader(name, value);
    if (onUploadProgress) xhr.upload.onprogress = (e) => e.lengthComputable && onUploadProgress(e.loaded / e.total);
    if (onUploaded) xhr.upload.onload = onUploaded;
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => reject(new RequestFailed(0, null, "The service could not be reached"));
    xhr.onabort = () => {
      const err = new RequestFailed(0, null, "Cancelled: the upload was stopped");
      err.cancelled = true;
      reject(err);
    };
    xhr.send(body);
  });
}

async function request(method, url, body, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const xhr = await xhrOnce(method, url, body, options);
    if (xhr.status === 401 && attempt < 2) {
      sessionStorage.removeItem(KEY_STORAGE);
      if (await askForKey()) continue;
    }
    if (xhr.status >= 200 && xhr.status < 300) return xhr;
    throw new RequestFailed(xhr.status, await problemOf(xhr), xhr.statusText);
  }
}

/**
 * POST the current file to `url`, showing upload progress and then `runningText`. While the
 * file is still being sent, Cancel aborts the upload (shown once an upload is seen part-way,
 * so a small file's upload does not flash the button).
 */
function upload(url, step, runningText) {
  if (state.stored) {
    // The file is on the server already: name it, send nothing.
    showProgress(`${step}: ${runningText}…`, null);
    const named = `${url}${url.includes("?") ? "&" : "?"}upload=${encodeURIComponent(state.stored)}`;
    return request("POST", named, null);
  }
  return sendFile(url, step, runningText);
}

/**
 * POST the current file's bytes to `url` (see upload).
 */
function sendFile(url, step, runningText) {
  const file = state.file;
  const sending = uploadTracker();
  return request("POST", url, file, {
    // The service reads a file by its signature. A browser's type comes from the name's extension and
    // can be anything but an image's for a microscope's file (Chromium calls a .dv video/x-dv).
    contentType: file.type.startsWith("image/") ? file.type : "application/octet-stream",
    onOpen: sending.open,
    onUploadProgress: (f) => {
      const xhr = sending.current();
      if (xhr && f < 1 && !xhr.partWay) {
        xhr.partWay = true;
        showCancel();
      }
      showProgress(`${step}: uploading ${Math.round(100 * f)}%`, f);
    },
    onUploaded: () => {
      sending.done();
      showProgress(`${step}: ${runningText}…`, null);
    },
  }).finally(sending.done);
}

/**
 * The request sending the file's bytes, kept in state.uploads while it sends so Cancel can abort
 * it: open(xhr) as it opens (a retry after a 401 ends the earlier one), done() when it is over.
 */
function uploadTracker() {
  let sending = null;
  const done = () => {
    if (!sending) return;
    state.uploads.delete(sending);
    sending = null;
    showCancel();
  };
  const open = (xhr) => {
    done();
    sending = xhr;
    state.uploads.add(xhr);
  };
  return { open, done, current: () => sending };
}

/**
 * " · 950.0 MB of 2.7 GB, about 3 min left": what is sent, and the time left at the rate seen
 * since the first progress event (after a second of it).
 */
function uploadedSoFar(size, fraction, rate) {
  const done = size * fraction;
  const left = secondsLeft(rate, done, size);
  const so = ` · ${formatBytes(done)} of ${formatBytes(size)}`;
  if (left === null || performance.now() - rate.at < 1000) return so;
  return `${so}, about ${formatDuration(left)} left`;
}

/**
 * Seconds until `done` reaches `total` at the rate seen since `rate` ({at, done}) was first set,
 * here when it is still unset; null until `done` has moved past it.
 */
function secondsLeft(rate, done, total) {
  const now = performance.now();
  if (rate.at === null) Object.assign(rate, { at: now, done });
  return done > rate.done ? ((total - done) * (now - rate.at)) / 1000 / (done - rate.done) : null;
}

/** The chosen channel / plane as query parameters (only those chosen). */
function planeParams() {
  const params = new URLSearchParams();
  const { channel, z, t, series } = state.plane;
  if (series !== "") params.set("series", series);
  if (channel !== "") params.set("channel", channel);
  if (z === "max" || z === "sum") params.set("project", z);
  else if (z !== "") params.set("z", z);
  if (t !== "") params.set("t", t);
  return params;
}

/** The options of one segmentation (POST segment and POST jobs take the same). */
function segmentParams(output, threshold) {
  const params = planeParams();
  params.set("output", output);
  if (output === "probability") params.set("bits", "8"); // the browser thresholds 8-bit values
  if (threshold !== null && threshold !== undefined) params.set("threshold", threshold.toFixed(2));
  if (state.split) params.set("split", state.split);
  if (state.diameter) params.set("diameter", state.diameter);
  if (state.polarity === "dark") params.set("polarity", "dark");
  return params;
}

/**
 * One segmentation of the current file, answered as POST segment answers it (a Blob and the
 * X-… headers): directly, or through a job for a large image. `purpose` names the job slot:
 * a new request for the same purpose cancels the older job.
 */
async function segmentRequest(output, threshold, step, runningText, purpose, extra = {}) {
  const params = segmentParams(output, threshold);
  for (const [name, value] of Object.entries(extra)) params.set(name, value);
  if (state.useJobs) {
    const answer = await viaJob(params, step, purpose);
    if (answer) return answer;
    state.useJobs = state.jobsOn = false; // the server has no jobs route (404): the direct path
  }
  return upload(`segment?${params}`, step, runningText);
}

// --- jobs (large images) -------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function cancelledError() {
  const err = new RequestFailed(0, null, "Cancelled: the job was stopped on the server");
  err.cancelled = true;
  return err;
}

/**
 * Submit the current file as a job, poll it with a progress bar, fetch its result and delete it.
 * Resolves to the result's XMLHttpRequest, or null when the server has no jobs (404).
 * `fetchResult(url)`: what to fetch of the finished job at `url` (jobs/{id}) before it is deleted.
 */
async function viaJob(params, step, purpose, fetchResult = (url) => request("GET", `${url}/result`)) {
  cancelJob(purpose);
  let submitted;
  try {
    submitted = await upload(`jobs?${params}`, step, "submitting the job");
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
  let status = JSON.parse(await submitted.response.text());
  const job = { id: status.id, cancelled: false };
  const url = `jobs/${encodeURIComponent(job.id)}`;
  state.jobs.set(purpose, job);
  showCancel();
  const rate = { at: null, done: 0 }; // first progress seen: the ETA is measured from there
  try {
    for (;;) {
      if (job.cancelled) throw cancelledError();
      showJobProgress(step, status, rate);
      if (status.status === "succeeded") break;
      if (status.status === "cancelled") throw cancelledError();
      if (status.status === "failed") {
        const problem = status.problem || {};
        throw new RequestFailed(problem.status || 0, problem, "The job failed");
      }
      await sleep(JOB_POLL_MS);
      if (job.cancelled) throw cancelledError();
      status = JSON.parse(await (await request("GET", url)).response.text());
    }
    return await fetchResult(url);
  } finally {
    if (state.jobs.get(purpose) === job) state.jobs.delete(purpose);
    showCancel();
    // The result is in the page now (or there is none): free the server's disk. A cancelled job
    // was deleted by cancelJob already.
    if (!job.cancelled) request("DELETE", url).catch(() => {});
  }
}

/** Stop the job running for `purpose` on the server (DELETE cancels its remaining tiles). */
function cancelJob(purpose) {
  const job = state.jobs.get(purpose);
  if (!job) return;
  job.cancelled = true;
  state.jobs.delete(purpose);
  showCancel();
  request("DELETE", `jobs/${encodeURIComponent(job.id)}`).catch(() => {});
}

/** Cancel: stop every upload still sending the file and every job running on the server. */
function cancelAll() {
  for (const xhr of [...state.uploads]) xhr.abort();
  for (const purpose of [...state.jobs.keys()]) cancelJob(purpose);
}

function showCancel() {
  const uploading = [...state.uploads].some((xhr) => xhr.partWay);
  $("cancel-job").hidden = state.jobs.size === 0 && !uploading;
}

/** A job's status on the progress bar: tiles done of total, and the time left at the rate seen. */
function showJobProgress(step, status, rate) {
  const done = status.tiles_done || 0;
  const total = status.tiles_total;
  if (status.status === "queued") return showProgress(`${step}: queued on the server`, null);
  if (status.stage === "waiting") return showProgress(`${step}: waiting for room on the server`, null);
  if (status.status !== "running" && status.status !== "succeeded") return undefined;
  if (!total) return showProgress(`${step}: reading the image, estimating the nucleus size`, null);
  const measured = secondsLeft(rate, done, total);
  const left = Number.isFinite(status.eta_s) ? status.eta_s : measured; // a server that estimates it
  const eta = left !== null && done < total ? `, about ${formatDuration(left)} left` : "";
  const what = done < total ? `${done} of ${total} tiles${eta}` : `all ${total} tiles done, finishing`;
  return showProgress(`${step}: ${what}`, done / total);
}

function formatDuration(seconds) {
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
  return `${Math.round(seconds / 60)} min`;
}

async function loadConfig() {
  try {
    const config = JSON.parse(await (await request("GET", "ui/config")).response.text());
    state.jobsOn = config.jobs !== false;
    if (Number.isFinite(config.job_above_pixels)) state.jobAbove = config.job_above_pixels;
    if (Number.isFinite(config.max_upload_bytes)) state.maxUpload = config.max_upload_bytes;
    state.storedOn = config.stored_uploads === true;
    if (Number.isFinite(config.max_stored_upload_bytes)) state.maxStored = config.max_stored_upload_bytes;
  } catch (_) {
    // An older server without ui/config: the defaults (POST jobs answering 404 turns jobs off).
  }
}

// --- status line ---------------------------------------------------------------------------------

function showError(message) {
  $("error").textContent = message || "";
}

function showProgress(text, fraction) {
  $("progress-box").hidden = false;
  $("progress-label").textContent = text;
  const bar = $("progress");
  if (fraction === null) bar.removeAttribute("value"); // indeterminate: the server is working
  else bar.value = fraction;
}

function hideProgress() {
  $("progress-box").hidden = true;
}

// --- model information ---------------------------------------------------------------------------

async function loadModelInfo() {
  try {
    const xhr = await request("GET", "v1/model");
    const info = JSON.parse(await xhr.response.text());
    const threshold = info.metadata && info.metadata.threshold;
    if (typeof threshold === "number") {
      state.modelThreshold = threshold;
      if (!state.prob) setThreshold(threshold);
    }
    // split=center needs the model's centre output; without one the server would answer 422.
    const names = (info.metadata && info.metadata.class_names) || [];
    $("split").querySelector('option[value="center"]').disabled = !names.includes("center");
    $("info-model").textContent = `${info.name} ${info.version}`;
    $("info-provider").textContent = info.provider || "–";
    const tiling = info.tiling ? ` · tiles ${info.tiling.tile_size} px, overlap ${info.tiling.overlap} px` : "";
    $("model-line").textContent = `Model ${info.name} ${info.version} on ${info.provider}${tiling}`;
  } catch (err) {
    $("model-line").textContent = `Model information unavailable — ${err.message}`;
    if (err.status === 503) setTimeout(loadModelInfo, 3000); // loading: ask again shortly
  }
}

// --- one image -----------------------------------------------------------------------------------

function stemOf(name) {
  const base = name.split(/[\\/]/).pop() || "image";
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(0, dot) : base;
}

const DOWNLOADS = ["mask", "labels", "objects", "geojson", "rois"];

/** A new run: answers for an older one are dropped; the result shown so far is cleared. */
function startRun() {
  const run = ++state.run;
  cancelAll(); // their answers would be dropped: stop their uploads, and their work on the server
  state.prob = null;
  state.features = [];
  state.countThreshold = null;
  clearTimeout(state.refetchTimer);
  showError("");
  $("result-controls").disabled = true;
  for (const name of DOWNLOADS) $(`download-${name}`).disabled = true;
  for (const id of ["info-count", "info-count-threshold", "info-foreground", "info-tiles", "info-inference",
    "info-plane", "info-count-3d"]) {
    $(id).textContent = "–";
  }
  return run;
}

async function handleFile(file) {
  const run = startRun();
  forgetStored();
  state.file = file;
  state.stem = stemOf(file.name);
  state.probe = null;
  state.plane = { channel: "", z: "", t: "", series: "" };
  setThreshold(state.modelThreshold);
  resetInfo();
  resetView();
  showWarnings([]);
  $("plane-controls").hidden = true;
  $("stage").dataset.state = "loading";
  if (!(await storeIfLarge(run))) return;
  await probeImage(run);
}

function formatBytes(n) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let k = 0;
  while (n >= 1000 && k < units.length - 1) { n /= 1000; k++; }
  return `${k ? n.toFixed(1) : Math.round(n)} ${units[k]}`;
}

/**
 * A file too large for one request (or large enough that sending it with each request wastes
 * minutes) is stored on the server once: POST uploads. True when the page may go on.
 */
async function storeIfLarge(run) {
  await configReady;
  const file = state.file;
  const overLimit = state.maxUpload !== null && file.size > state.maxUpload;
  if (!overLimit && file.size <= STORE_ABOVE_BYTES) return true;
  const fail = (message) => {
    hideProgress();
    showError(message);
    $("stage").dataset.state = "empty";
    return false;
  };
  if (!state.storedOn) {
    if (!overLimit) return true; // sent with each request, as before
    return fail(`The file has ${formatBytes(file.size)}; this server takes at most ${formatBytes(state.maxUpload)} ` +
      "per request and does not store files. Use unet-segment, or ask the operator.");
  }
  if (state.maxStored !== null && file.size > state.maxStored) {
    return fail(`The file has ${formatBytes(file.size)}; this server stores files of at most ` +
      `${formatBytes(state.maxStored)}. Use unet-segment, or ask the operator.`);
  }
  try {
    const id = await storeResumably(file, run);
    if (run !== state.run) {
      request("DELETE", `uploads/${encodeURIComponent(id)}`).catch(() => {});
      return false;
    }
    state.stored = id;
    return true;
  } catch (err) {
    if (run !== state.run) return false;
    return fail(err.message);
  }
}

/**
 * Store `file` on the server as a resumable upload (tus 1.0) and resolve to its id: created empty,
 * then sent PIECE_BYTES at a time. A piece that fails on the way (the connection lost, the server
 * restarting) is sent again from the offset the server says it kept; other refusals (415: not an
 * image) end it. The upload is deleted on the server if storing does not finish.
 */
async function storeResumably(file, run) {
  const step = "Sending the file";
  const tus = { "Tus-Resumable": "1.0.0" };
  const name = btoa(String.fromCharCode(...new TextEncoder().encode(file.name))); // base64 of UTF-8
  const created = await request("POST", "uploads", null, {
    headers: { ...tus, "Upload-Length": String(file.size), "Upload-Metadata": `filename ${name}` },
  });
  const url = `uploads/${encodeURIComponent(JSON.parse(await created.response.text()).id)}`;
  const rate = { at: null, done: 0 }; // first progress seen: the time left is measured from there
  let offset = 0;
  let lost = 0;
  try {
    while (offset < file.size) {
      if (run !== state.run) throw Object.assign(new Error("another file was chosen"), { cancelled: true });
      const end = Math.min(file.size, offset + PIECE_BYTES);
      try {
        const xhr = await sendPiece(url, file.slice(offset, end), offset, (sent) => {
          const done = offset + sent;
          const more = uploadedSoFar(file.size, done / file.size, rate);
          showProgress(`${step}: uploading ${Math.round((100 * done) / file.size)}%${more}`, done / file.size);
        });
        offset = Number(xhr.getResponseHeader("Upload-Offset"));
        lost = 0;
      } catch (err) {
        const resumable = !err.status || err.status === 409 || err.status >= 500;
        if (err.cancelled || !resumable || ++lost > RESUME_TRIES) throw err;
        const wait = 2 ** (lost - 1);
        showProgress(`${step}: connection lost at ${formatBytes(offset)}; resuming in ${wait} s ` +
          `(try ${lost} of ${RESUME_TRIES})`, offset / file.size);
        await sleep(1000 * wait);
        offset = await keptOffset(url, offset);
      }
    }
  } catch (err) {
    request("DELETE", url).catch(() => {});
    throw err;
  }
  showProgress(`${step}: stored on the server`, null);
  return decodeURIComponent(url.slice("uploads/".length));
}

/** PATCH one piece of a stored file at `offset`; Cancel aborts it; `onSent(bytes)` as it goes. */
function sendPiece(url, piece, offset, onSent) {
  const sending = uploadTracker();
  return request("PATCH", url, piece, {
    contentType: "application/offset+octet-stream",
    headers: { "Tus-Resumable": "1.0.0", "Upload-Offset": String(offset) },
    onOpen: (xhr) => {
      xhr.partWay = true; // storing a large file: Cancel is offered from the start
      sending.open(xhr);
      showCancel();
    },
    onUploadProgress: (f) => onSent(f * piece.size),
  }).finally(sending.done);
}

/** The bytes the server kept of a stored file (HEAD: Upload-Offset); `known` if it cannot say. */
async function keptOffset(url, known) {
  try {
    const xhr = await request("HEAD", url, null);
    const kept = Number(xhr.getResponseHeader("Upload-Offset"));
    return Number.isFinite(kept) ? kept : known;
  } catch (_) {
    return known; // not reachable yet: the next PATCH finds out, and a 409 says where the server is
  }
}

/** The previous file's stored copy is not needed any more: free the server's disk. */
function forgetStored() {
  if (!state.stored) return;
  const url = `uploads/${encodeURIComponent(state.stored)}`;
  state.stored = null;
  request("DELETE", url).catch(() => {});
}

/**
 * POST probe for the file's image chosen in state.plane.series (the first by default), show what
 * it holds, and preview / segment it. The images of one file (OME-TIFF Images, CZI scenes) may
 * differ in size, channels and planes: each is probed when chosen.
 */
async function probeImage(run) {
  try {
    const series = state.plane.series;
    const probe = await upload(series === "" ? "probe" : `probe?series=${series}`, "Reading the file",
      "listing its channels and planes");
    if (run !== state.run) return;
    state.probe = JSON.parse(await probe.response.text());
    await configReady;
    state.useJobs = state.jobsOn && state.probe.width * state.probe.height > state.jobAbove;
  } catch (err) {
    if (run !== state.run) return;
    hideProgress();
    showError(err.message);
    $("stage").dataset.state = "empty";
    // The image asked for is refused, the file holds others (a LAS X project opening on a
    // λ-scan): offer them, as the 415 lists them.
    const others = err.problem && err.problem.choices && err.problem.choices.series;
    if (others && others.length > 1) showSeriesChoices(others);
    return;
  }
  showProbe(state.probe);
  await processPlane(run);
}

/** How the image picker names one image of a file: index, name, and what it holds. */
function seriesLabel(index, name, about) {
  return (name ? `${index} · ${name}` : `${index}`) + (about ? ` (${about})` : "");
}

/** Only the image picker, for a file whose image asked for is refused: choosing another probes it. */
function showSeriesChoices(choices) {
  const series = $("series");
  series.replaceChildren(new Option(`— choose one of ${choices.length} images —`, ""));
  for (const c of choices) series.add(new Option(seriesLabel(c.index, c.name, c.about), String(c.index)));
  series.value = state.plane.series;
  for (const box of ["channel-box", "z-box", "t-box", "stack-box", "every-box", "measure-sum-box"]) {
    $(box).hidden = true;
  }
  $("series-box").hidden = false;
  $("plane-controls").hidden = false;
}

/** What the probe found: file facts in the info panel, pickers for what must be chosen. */
function showProbe(probe) {
  const size = probe.pixel_size_um;
  $("info-pixel-size").textContent = size ? `${formatUm(size.x, size.y)} (${size.source})` : "unknown";
  const planes = Object.entries(probe.planes).map(([axis, n]) => `${n} ${axis}`).join(", ");
  $("info-file").textContent = `${probe.format}, ${probe.axes}` +
    (probe.channels.length > 1 ? `, ${probe.channels.length} channels` : "") + (planes ? `, ${planes}` : "");
  showWarnings(probe.warnings);

  const needsChannel = probe.required.includes("channel");
  const channel = $("channel");
  const lone = probe.signal_channel == null ? null : probe.channels[probe.signal_channel];
  const byDefault = lone ? `(default: ${lone.name}, the only colour with signal)` : "(default)";
  channel.replaceChildren(new Option(needsChannel ? "— choose the channel with the nuclei —" : byDefault, ""));
  for (const c of probe.channels) channel.add(new Option(c.name ? `${c.index} · ${c.name}` : `${c.index}`, String(c.index)));
  if (probe.rgb && !probe.grey_rgb) channel.add(new Option("gray · all colours mixed (brightfield, H&E)", "gray"));
  $("channel-box").hidden = probe.channels.length < 2 || probe.grey_rgb;

  const fill = (select, box, axis, extras) => {
    const n = probe.planes[axis] || 0;
    select.replaceChildren(new Option(`— choose one of ${n} —`, ""));
    for (const [value, text] of extras) select.add(new Option(text, value));
    for (let k = 0; k < n; k++) select.add(new Option(`${k}`, String(k)));
    box.hidden = n < 2;
  };
  fill($("zplane"), $("z-box"), "Z", [["max", "maximum projection"], ["sum", "sum projection (for intensities)"]]);
  fill($("tplane"), $("t-box"), "T", []);
  $("measure-sum-box").hidden = $("z-box").hidden;  // a stack's channels can be measured on their sum
  // Linking slices is a job's work (output=labels3d): offered where the server runs jobs.
  $("stack-box").hidden = (probe.planes.Z || 0) < 2 || !state.jobsOn;

  const series = $("series");
  const count = probe.series.count;
  series.replaceChildren(new Option(`(default: the first of ${count})`, ""));
  for (let k = 0; k < count; k++) {
    // what each image holds tells apart a project's "Series001", "Series002"...
    series.add(new Option(seriesLabel(k, probe.series.names[k], (probe.series.about || [])[k]), String(k)));
  }
  series.value = state.plane.series;
  $("series-box").hidden = count < 2;
  $("every-box").hidden = count < 2; // after the choices it uses: channel, plane
  $("plane-controls").hidden = $("series-box").hidden && $("channel-box").hidden && $("z-box").hidden &&
    $("t-box").hidden;
}

function formatUm(x, y) {
  const fx = Number(x.toPrecision(4)), fy = Number(y.toPrecision(4));
  return fx === fy ? `${fx} µm/px` : `${fx} × ${fy} µm/px`;
}

/** Choices the file needs that the pickers do not have yet. */
function missingChoices() {
  if (!state.probe) return [];
  const missing = [];
  for (const need of state.probe.required) {
    // polarity=dark mixes a colour image's colours itself (bright field, H&E)
    const mixedByPolarity = state.polarity === "dark" && state.probe.rgb;
    if (need === "channel" && state.plane.channel === "" && !mixedByPolarity) missing.push("the nuclei channel");
    if (need === "z" && state.plane.z === "") missing.push("a z-slice (or the maximum projection)");
    if (need === "t" && state.plane.t === "") missing.push("a time point");
  }
  return missing;
}

/** A new nucleus diameter changes the scale the model runs at: segment again. */
function onDiameterChange() {
  const value = $("diameter").value.trim();
  state.diameter = value !== "" && Number(value) >= 1 ? value : "";
  if (!state.file || !state.probe) return;
  processPlane(startRun());
}

/** Dark nuclei on a bright field are read as optical density by the server: segment again. */
function onPolarityChange() {
  state.polarity = $("polarity").value === "dark" ? "dark" : "bright";
  if (!state.file || !state.probe) return;
  processPlane(startRun());
}

function onPlaneChange() {
  state.plane = { channel: $("channel").value, z: $("zplane").value, t: $("tplane").value,
    series: state.plane.series };
  if (!state.file || !state.probe) return;
  processPlane(startRun());
}

/** Another image of the file: its own channels and planes, so probed afresh and chosen anew. */
function onSeriesChange() {
  state.plane = { channel: "", z: "", t: "", series: $("series").value };
  if (!state.file) return;  // no probe yet either when the first image was refused
  const run = startRun();
  resetView();
  probeImage(run);
}

/** Preview the chosen plane; once every needed choice is made, segment it. */
async function processPlane(run) {
  const current = () => run === state.run;
  try {
    const params = planeParams().toString();
    const preview = await upload(`ui/preview${params ? `?${params}` : ""}`, "Step 1 of 3, preview", "rendering");
    if (!current()) return;
    await showPreview(preview.response);
    const missing = missingChoices();
    const stain = state.probe.rgb && missing.includes("the nuclei channel")
      ? " For a stain that darkens nuclei (H&E, bright field), choose “Dark on a bright background” above." : "";
    $("plane-help").textContent = missing.length
      ? `This file holds more than one image: choose ${missing.join(" and ")} to segment.${stain}` : "";
    if (missing.length) {
      hideProgress();
      $("stage").dataset.state = "ready";
      return;
    }

    const probability = await segmentRequest("probability", null, "Step 2 of 3, segmentation", "running the model",
      "segment");
    if (!current()) return;
    state.prob = await decodeGray(probability.response, state.width, state.height);
    showHeaders(probability);
    $("stage").dataset.state = "ready";
    $("result-controls").disabled = false;
    render();

    showProgress("Step 3 of 3, objects: uploading", 0);
    await refetchObjects(null, "Step 3 of 3, objects");
    if (!current()) return;
    for (const name of DOWNLOADS) $(`download-${name}`).disabled = false;
    hideProgress();
  } catch (err) {
    if (!current()) return;
    hideProgress();
    showError(err.message);
    if (!state.prob) $("stage").dataset.state = state.width ? "ready" : "empty";
  }
}

async function showPreview(blob) {
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  await img.decode();
  state.width = img.naturalWidth;
  state.height = img.naturalHeight;
  const canvas = $("overlay");
  canvas.width = state.width;
  canvas.height = state.height;
  canvas.getContext("2d").clearRect(0, 0, state.width, state.height);
  $("info-size").textContent = `${state.width} × ${state.height} px`;
  fitStage();
}

function showWarnings(list) {
  state.warnings = [...new Set(list)];
  $("warnings").replaceChildren(...state.warnings.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
}

// --- zoom and pan --------------------------------------------------------------------------------

const view = { scale: 1, x: 0, y: 0 };

function applyView() {
  $("stage").style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  $("zoom-level").textContent = `${Math.round(100 * view.scale)}%`;
}

function resetView() {
  Object.assign(view, { scale: 1, x: 0, y: 0 });
  applyView();
}

/** Zoom by `factor` keeping the point (cx, cy) of the viewport where it is. */
function zoomAt(factor, cx, cy) {
  const scale = Math.min(64, Math.max(1, view.scale * factor));
  const k = scale / view.scale;
  view.x = cx - k * (cx - view.x);
  view.y = cy - k * (cy - view.y);
  view.scale = scale;
  if (scale === 1) { view.x = 0; view.y = 0; }
  applyView();
}

function zoomCentre(factor) {
  const box = $("viewport");
  zoomAt(factor, box.clientWidth / 2, box.clientHeight / 2);
}

function wireZoom() {
  const box = $("viewport");
  box.addEventListener("wheel", (e) => {
    if (!state.width) return;
    e.preventDefault();
    const r = box.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  let drag = null;
  box.addEventListener("pointerdown", (e) => {
    if (view.scale === 1) return;
    drag = { x: e.clientX, y: e.clientY };
    box.setPointerCapture(e.pointerId);
    box.classList.add("panning");
  });
  box.addEventListener("pointermove", (e) => {
    if (!drag) return;
    view.x += e.clientX - drag.x;
    view.y += e.clientY - drag.y;
    drag = { x: e.clientX, y: e.clientY };
    applyView();
  });
  const end = () => { drag = null; box.classList.remove("panning"); };
  box.addEventListener("pointerup", end);
  box.addEventListener("pointercancel", end);
  box.addEventListener("dblclick", resetView);
  $("zoom-in").addEventListener("click", () => zoomCentre(1.5));
  $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
  $("zoom-reset").addEventListener("click", resetView);
}

/** Scale the image (and the canvas over it) to fill the viewer: small images up, large ones down. */
function fitStage() {
  if (!state.width) return;
  const box = $("stage").parentElement;
  const style = getComputedStyle(box);
  const width = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const scale = Math.min(width / state.width, (0.85 * window.innerHeight) / state.height);
  $("preview").style.width = `${Math.max(1, Math.floor(state.width * scale))}px`;
  $("viewport").style.height = `${Math.max(1, Math.floor(state.height * scale))}px`;
}

/** An 8-bit gray PNG → Uint8Array of its values (the red channel of the decoded RGBA). */
async function decodeGray(blob, width, height) {
  // No colour management or premultiplication: the bytes are probabilities, not colours.
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  if (bitmap.width !== width || bitmap.height !== height) {
    throw new RequestFailed(0, null, `The probability map is ${bitmap.width} × ${bitmap.height}, ` +
      `the image ${width} × ${height}`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const gray = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < gray.length; i++, j += 4) gray[i] = rgba[j];
  return gray;
}

function showHeaders(xhr) {
  const header = (name) => xhr.getResponseHeader(name);
  $("info-tiles").textContent = header("X-Tiles") || "–";
  const ms = parseFloat(header("X-Inference-Ms"));
  $("info-inference").textContent = Number.isFinite(ms) ? `${ms.toFixed(0)} ms` : "–";
  const name = header("X-Model-Name");
  const version = header("X-Model-Version");
  if (name && version) $("info-model").textContent = `${name} ${version}`; // the model that answered
  // What was segmented, as the server says (not as the pickers say).
  const parts = [];
  const channel = header("X-Channel");
  if (channel) {
    const label = header("X-Channel-Name");
    parts.push(channel === "gray" ? "colours mixed to grey"
      : `channel ${channel}${label ? ` (${decodeURIComponent(label)})` : ""}`);
  }
  const projection = header("X-Projection");
  if (projection) parts.push(`${projection.startsWith("sum") ? "sum" : "maximum"} projection over Z`);
  if (header("X-Z")) parts.push(`z ${header("X-Z")}`);
  if (header("X-T")) parts.push(`t ${header("X-T")}`);
  $("info-plane").textContent = parts.length ? parts.join(", ") : "the whole image (one plane)";
  const size = header("X-Pixel-Size-Um");
  if (size) {
    const [x, y] = size.split(",").map(Number);
    $("info-pixel-size").textContent = `${formatUm(x, y ?? x)} (${header("X-Pixel-Size-Source")})`;
  }
  const diameter = header("X-Nucleus-Diameter");
  const source = { request: "as entered", estimated: "estimated", "model-scale": "not resized" }[
    header("X-Diameter-Source")] || header("X-Diameter-Source") || "";
  $("info-diameter").textContent = diameter ? `${Number(diameter).toFixed(1)} px (${source})`
    : source || "–";
  let extra = [];
  try { extra = JSON.parse(header("X-Warnings") || "[]"); } catch (_) { extra = []; }
  showWarnings([...(state.probe ? state.probe.warnings : []), ...extra]);
}

function resetInfo() {
  for (const id of ["info-count", "info-count-threshold", "info-foreground", "info-size", "info-tiles",
    "info-inference", "info-file", "info-plane", "info-pixel-size", "info-diameter"]) {
    $(id).textContent = "–";
  }
}

/** Ask the server for the objects at `threshold` (null: the model's) and show their count. */
async function refetchObjects(threshold, step) {
  const run = state.run;
  const ticket = ++state.countRequest;
  $("info-count").setAttribute("aria-busy", "true");
  try {
    const xhr = await segmentRequest("geojson", threshold, step, "finding objects", "objects");
    if (run !== state.run || ticket !== state.countRequest) return;
    const collection = JSON.parse(await xhr.response.text());
    state.features = (collection.features || []).filter((f) => f.geometry);
    state.countThreshold = threshold;
    const header = parseInt(xhr.getResponseHeader("X-Object-Count"), 10);
    const count = Number.isFinite(header) ? header : state.features.length;
    $("info-count").textContent = String(count);
    const used = threshold === null ? state.modelThreshold : threshold;
    $("info-count-threshold").textContent =
      `${used.toFixed(2)}${used.toFixed(2) === state.modelThreshold.toFixed(2) ? " (model default)" : ""}`;
    $("info-count").removeAttribute("aria-busy");
    if (currentView() === "labels" || currentView() === "outlines") render();
  } catch (err) {
    if (run === state.run && ticket === state.countRequest) {
      $("info-count").removeAttribute("aria-busy");
      throw err;
    }
  }
}

// --- drawing -------------------------------------------------------------------------------------

function currentView() {
  return document.querySelector('input[name="view"]:checked').value;
}

/** Value v (0–255) is foreground when v / 255 > threshold, as the server's mask (prob > threshold). */
function cutoff(threshold) {
  return Math.floor(threshold * 255);
}

function updateForeground() {
  if (!state.prob) return;
  const cut = cutoff(state.threshold);
  let on = 0;
  for (let i = 0; i < state.prob.length; i++) if (state.prob[i] > cut) on++;
  $("info-foreground").textContent = `${(100 * on / state.prob.length).toFixed(2)} %`;
}

// Heat map: black → purple → orange → pale yellow (inferno-like), 256 entries.
const HEAT = (() => {
  const stops = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  const lut = new Uint8Array(256 * 3);
  for (let v = 0; v < 256; v++) {
    const x = (v / 255) * (stops.length - 1);
    const i = Math.min(Math.floor(x), stops.length - 2);
    const t = x - i;
    for (let c = 0; c < 3; c++) lut[3 * v + c] = Math.round(stops[i][c] * (1 - t) + stops[i + 1][c] * t);
  }
  return lut;
})();

function render() {
  updateForeground();
  if (!state.prob) return;
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const { width, height, prob } = state;
  const view = currentView();
  ctx.clearRect(0, 0, width, height);
  if (view === "labels" || view === "outlines") {
    drawLabels(ctx, view === "outlines");
    return;
  }
  const image = ctx.createImageData(width, height);
  const px = image.data;
  if (view === "mask") {
    const cut = cutoff(state.threshold);
    for (let i = 0, j = 0; i < prob.length; i++, j += 4) {
      if (prob[i] > cut) {
        px[j] = MASK_RGB[0]; px[j + 1] = MASK_RGB[1]; px[j + 2] = MASK_RGB[2]; px[j + 3] = 255;
      }
    }
  } else {
    for (let i = 0, j = 0; i < prob.length; i++, j += 4) {
      const k = 3 * prob[i];
      px[j] = HEAT[k]; px[j + 1] = HEAT[k + 1]; px[j + 2] = HEAT[k + 2]; px[j + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

/**
 * Each nucleus (a GeoJSON polygon along pixel edges) filled in its own colour, or only outlined:
 * every object its own ring, so two touching nuclei show the line between them.
 */
function drawLabels(ctx, outlineOnly = false) {
  ctx.lineWidth = outlineOnly ? 1 : Math.max(1, state.width / 800);
  state.features.forEach((feature, index) => {
    const polygons = feature.geometry.type === "MultiPolygon"
      ? feature.geometry.coordinates : [feature.geometry.coordinates];
    const path = new Path2D();
    for (const rings of polygons) {
      for (const ring of rings) {
        ring.forEach(([x, y], i) => (i ? path.lineTo(x, y) : path.moveTo(x, y)));
        path.closePath();
      }
    }
    const hue = (index * 137.508) % 360; // golden angle: neighbours get distant hues
    if (outlineOnly) {
      ctx.strokeStyle = `hsl(${hue} 100% 60%)`;
      ctx.stroke(path);
      return;
    }
    ctx.fillStyle = `hsl(${hue} 85% 55%)`;
    ctx.fill(path, "evenodd");
    ctx.strokeStyle = `hsl(${hue} 90% 25%)`;
    ctx.stroke(path);
  });
}

// --- controls ------------------------------------------------------------------------------------

function setThreshold(value) {
  state.threshold = value;
  $("threshold").value = String(value);
  $("threshold-value").textContent = value.toFixed(2);
}

function onThresholdInput() {
  state.threshold = parseFloat($("threshold").value);
  $("threshold-value").textContent = state.threshold.toFixed(2);
  render();
  if (!state.prob) return;
  // The count is the server's (object splitting lives there): ask again once the slider rests.
  $("info-count").textContent = "updating…";
  clearTimeout(state.refetchTimer);
  const threshold = state.threshold;
  state.refetchTimer = setTimeout(() => recount(threshold, "Objects at the new threshold"), REFETCH_DELAY_MS);
}

/** Re-count the objects on the server after a control changed; errors go to the status line. */
async function recount(threshold, step) {
  try {
    await refetchObjects(threshold, step);
    hideProgress();
  } catch (err) {
    hideProgress();
    showError(err.message);
  }
}

function onSplitChange() {
  state.split = $("split").value;
  if (!state.prob) return;
  $("info-count").textContent = "updating…";
  clearTimeout(state.refetchTimer); // a pending threshold re-count is folded into this one
  const atDefault = state.countThreshold === null && state.threshold === state.modelThreshold;
  recount(atDefault ? null : state.threshold, "Objects with the new split");
}

/** File name of a download: the input's stem, what it is, the suffix of what the server sent. */
function downloadName(output, mediaType) {
  const type = (mediaType || "").split(";")[0].trim();
  const suffix = { "image/png": ".png", "image/tiff": ".tif", "text/csv": ".csv", "application/geo+json": ".geojson",
    "application/zip": ".zip" }[type] || "";
  const what = { mask: "_mask", labels: "_labels", objects: "_objects", geojson: "", rois: "_rois" }[output];
  return `${state.stem}${what}${suffix}`;
}

/** Hand `blob` to the browser as a download named `name`. */
function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * What a saved table or outline set adds: every channel's intensity per nucleus (the box shows for
 * multi-channel files), with its local background if a ring is given, and a cell around each
 * nucleus. Only downloads ask for them (none changes the prediction: the outlines shown keep theirs,
 * cached on the server).
 */
function downloadExtras(output) {
  const extra = {};
  if (output === "objects" || output === "geojson") {
    if (!$("channel-box").hidden && $("measure-all").checked) {
      extra.measure = "all";
      if (!$("measure-sum-box").hidden && $("measure-sum").checked) extra.measure_project = "sum";
      const ring = Number($("background-ring").value);
      if ($("background-ring").value !== "" && ring > 0) extra.background_ring = String(ring);
    }
  }
  if (output === "objects" || output === "geojson" || output === "rois") {
    const expand = Number($("expand").value);
    if ($("expand").value !== "" && expand > 0) extra.expand = String(expand);
  }
  return extra;
}

async function download(output) {
  if (!state.file) return;
  try {
    const xhr = await segmentRequest(output, state.threshold, `Download ${output}`, "segmenting",
      `download-${output}`, downloadExtras(output));
    save(xhr.response, downloadName(output, xhr.getResponseHeader("Content-Type")));
  } catch (err) {
    showError(err.message);
  } finally {
    hideProgress();
  }
}

/**
 * Every image of a file holding several (a LAS X project's, a CZI's scenes, an OME-TIFF's Images),
 * segmented one after another with the choices made here, their tables saved as one ZIP
 * (NAME_s0.csv, … as unet-segment --series all names them) with manifest.json: each image's object
 * count, or the problem that stopped it (a channel it lacks). A stored file is sent nothing again.
 */
async function downloadEveryImage() {
  if (!state.file || !state.probe) return;
  const run = state.run;
  const count = state.probe.series.count;
  const names = state.probe.series.names || [];
  const missing = missingChoices();
  if (missing.length) {
    showError(`Choose ${missing.join(" and ")} first: every image is segmented with it.`);
    return;
  }
  const files = [];
  const images = [];
  showError("");
  try {
    for (let k = 0; k < count; k++) {
      const entry = { series: k, name: names[k] || null };
      try {
        const xhr = await segmentRequest("objects", state.threshold, `Image ${k + 1} of ${count}`, "segmenting",
          "download-every", { ...downloadExtras("objects"), series: String(k) });
        if (run !== state.run) return;
        const output = `${state.stem}_s${k}.csv`;
        files.push([output, new Uint8Array(await xhr.response.arrayBuffer())]);
        Object.assign(entry, { output, status: 200, object_count: Number(xhr.getResponseHeader("X-Object-Count")) });
      } catch (err) {
        if (err.cancelled || run !== state.run) throw err;
        Object.assign(entry, { output: null, status: err.status || 0, problem: err.problem || { detail: err.message } });
      }
      images.push(entry);
    }
    const manifest = { file: state.file.name, output: "objects", images };
    files.push(["manifest.json", new TextEncoder().encode(JSON.stringify(manifest, null, 2))]);
    save(zipStored(files), `${state.stem}_objects.zip`);
  } catch (err) {
    if (run === state.run) showError(err.message);
  } finally {
    if (run === state.run) hideProgress();
  }
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * A ZIP of `files` ([name, Uint8Array] pairs) stored, not compressed (tables of a few MB; no
 * library: the page works offline), names in UTF-8. APPNOTE 6.3.x: a local header before each
 * member, the central directory, then its end record.
 */
function zipStored(files) {
  const utf8 = new TextEncoder();
  const DOS_DATE_1980 = 0x21; // 1980-01-01: the page does not date the tables
  const parts = [];
  const directory = [];
  let offset = 0;
  for (const [name, data] of files) {
    const nameBytes = utf8.encode(name);
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true); // names in UTF-8
    local.setUint16(12, DOS_DATE_1980, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, nameBytes.length, true);
    parts.push(new Uint8Array(local.buffer), nameBytes, data);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(14, DOS_DATE_1980, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, data.length, true);
    entry.setUint32(24, data.length, true);
    entry.setUint16(28, nameBytes.length, true);
    entry.setUint32(42, offset, true);
    directory.push(new Uint8Array(entry.buffer), nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const size = directory.reduce((n, part) => n + part.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...directory, new Uint8Array(end.buffer)], { type: "application/zip" });
}

/**
 * The stack's nuclei in 3-D: a job over every z-slice (the channel, time point, diameter, split,
 * polarity and threshold chosen here; never a z or projection), its count shown and its files
 * saved as one ZIP.
 */
async function downloadStack() {
  if (!state.file) return;
  const run = state.run;
  const missing = missingChoices().filter((need) => !need.startsWith("a z-slice"));
  if (missing.length) {
    showError(`Choose ${missing.join(" and ")} first: the 3-D nuclei need it too.`);
    return;
  }
  showError("");
  const params = segmentParams("labels3d", state.threshold);
  params.delete("z");
  params.delete("project");
  // The 3-D table measures every channel per nucleus as the 2-D one does, and grows the cells in 3-D.
  if (!$("channel-box").hidden && $("measure-all").checked) params.set("measure", "all");
  const expand = Number($("expand").value);
  if ($("expand").value !== "" && expand > 0) params.set("expand", String(expand));
  try {
    const zip = await viaJob(params, "3-D nuclei", "stack", async (url) => {
      const summary = JSON.parse(await (await request("GET", `${url}/result`)).response.text());
      if (run === state.run) {
        const cells = summary.expand ? `, each with its cell grown ${summary.expand} px in 3-D` : "";
        $("info-count-3d").textContent = `${summary.objects} in ${summary.depth} slices${cells}`;
        showWarnings([...state.warnings, ...summary.warnings]);
      }
      return request("GET", `${url}/files.zip`);
    });
    if (!zip) throw new RequestFailed(404, null, "This server runs no jobs, which 3-D nuclei need");
    if (run === state.run) save(zip.response, `${state.stem}_labels3d.zip`);
  } catch (err) {
    if (run === state.run) showError(err.message);
  } finally {
    if (run === state.run) hideProgress();
  }
}

function setOpacity() {
  const value = parseFloat($("opacity").value);
  $("overlay").style.opacity = String(value);
  $("opacity-value").textContent = `${Math.round(100 * value)}%`;
}

function wireDragAndDrop() {
  const zone = $("drop-zone");
  // Dropping a file elsewhere on the page must not navigate away from it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
  zone.addEventListener("dragover", () => zone.classList.add("over"));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    zone.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) handleFile(file);
  });
}

function init() {
  $("file-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) handleFile(file);
  });
  wireDragAndDrop();
  $("threshold").addEventListener("input", onThresholdInput);
  $("split").addEventListener("change", onSplitChange);
  $("diameter").addEventListener("change", onDiameterChange);
  $("polarity").addEventListener("change", onPolarityChange);
  $("opacity").addEventListener("input", setOpacity);
  for (const radio of document.querySelectorAll('input[name="view"]')) radio.addEventListener("change", render);
  for (const name of DOWNLOADS) $(`download-${name}`).addEventListener("click", () => download(name));
  $("download-stack").addEventListener("click", downloadStack);
  $("download-every").addEventListener("click", downloadEveryImage);
  for (const id of ["channel", "zplane", "tplane"]) $(id).addEventListener("change", onPlaneChange);
  $("series").addEventListener("change", onSeriesChange);
  wireZoom();
  window.addEventListener("resize", fitStage);
  $("cancel-job").addEventListener("click", cancelAll);
  // Leaving the page: its stored file is of no use to anyone (the server would expire it later).
  window.addEventListener("pagehide", () => {
    if (!state.stored) return;
    const key = sessionStorage.getItem(KEY_STORAGE);
    fetch(`uploads/${encodeURIComponent(state.stored)}`,
      { method: "DELETE", keepalive: true, headers: key ? { "X-API-Key": key } : {} }).catch(() => {});
  });
  setOpacity();
  loadModelInfo();
}

const configReady = loadConfig();
init();
