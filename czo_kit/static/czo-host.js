/*
 * czo-host.js: the dashboard side of the c-zo extension bridge.
 *
 * Each extension iframe gets messages only at its app's exact origin, and a message is
 * accepted only when it comes from that iframe's window AND from that origin. Messages are
 * versioned JSON objects {v: 1, type, payload}; unknown types are ignored.
 */
(function () {
  "use strict";

  var MAX_HEIGHT = 4000;
  var MIN_HEIGHT = 40;
  var NAVIGABLE = /^\/dashboard\/shops\/[0-9]{1,12}(\/[A-Za-z0-9_-]{1,64}){0,4}\/?$/;
  var configElement = document.getElementById("czo-config");
  if (!configElement) { return; }
  var config = JSON.parse(configElement.textContent);

  // What the host did, for people debugging an extension (and for the browser tests).
  var log = { accepted: [], ignored: [] };
  window.__czoBridge = log;

  var frames = [];
  config.frames.forEach(function (frame) {
    var element = document.getElementById(frame.id);
    if (element) { frames.push({ spec: frame, element: element }); }
  });

  function frameFor(source) {
    for (var i = 0; i < frames.length; i++) {
      if (frames[i].element.contentWindow === source) { return frames[i]; }
    }
    return null;
  }

  function send(frame, type, payload) {
    frame.element.contentWindow.postMessage({ v: 1, type: type, payload: payload }, frame.spec.origin);
  }

  function ignore(reason, event) {
    log.ignored.push({ reason: reason, origin: event.origin });
  }

  function toast(frame, payload) {
    var text = payload && typeof payload.message === "string" ? payload.message.slice(0, 500) : "";
    if (!text) { return false; }
    var level = payload.level === "error" || payload.level === "success" ? payload.level : "info";
    var box = document.getElementById("czo-toasts");
    var item = document.createElement("div");
    item.className = "czo-toast czo-toast-" + level;
    item.textContent = frame.spec.appId + ": " + text;  // text only: never HTML
    box.appendChild(item);
    setTimeout(function () { if (item.parentNode) { item.parentNode.removeChild(item); } }, 6000);
    return true;
  }

  function resize(frame, payload) {
    var height = payload ? Number(payload.height) : NaN;
    if (!isFinite(height)) { return false; }
    height = Math.max(MIN_HEIGHT, Math.min(MAX_HEIGHT, Math.round(height)));
    frame.element.style.height = height + "px";
    return true;
  }

  function navigate(payload) {
    var path = payload && typeof payload.path === "string" ? payload.path : "";
    if (!NAVIGABLE.test(path) || path.indexOf("..") !== -1 || path.indexOf("//") !== -1) { return false; }
    window.location.assign(path);
    return true;
  }

  function requestToken(frame) {
    fetch(config.tokenUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CZO-Dashboard": "1" },
      body: JSON.stringify({ appId: frame.spec.appId, shopId: frame.spec.shopId })
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (body) {
      send(frame, "czo:token", { token: body.token, expiresAt: body.expiresAt });
    }).catch(function (error) {
      send(frame, "czo:token", { error: String(error.message || error) });
    });
    return true;
  }

  window.addEventListener("message", function (event) {
    var frame = frameFor(event.source);
    if (!frame) { ignore("unknown source", event); return; }
    if (event.origin !== frame.spec.origin) { ignore("wrong origin", event); return; }
    var message = event.data;
    if (!message || typeof message !== "object" || message.v !== 1 || typeof message.type !== "string") {
      ignore("malformed", event);
      return;
    }
    var handled = false;
    switch (message.type) {
      case "czo:ready": send(frame, "czo:context", frame.spec.context); handled = true; break;
      case "czo:resize": handled = resize(frame, message.payload); break;
      case "czo:notify": handled = toast(frame, message.payload); break;
      case "czo:navigate": handled = navigate(message.payload); break;
      case "czo:request-token": handled = requestToken(frame); break;
      default: ignore("unknown type " + message.type.slice(0, 40), event); return;
    }
    if (handled) {
      log.accepted.push({ type: message.type, app: frame.spec.appId });
    } else {
      ignore("invalid " + message.type, event);
    }
  });

  // Frames start loading only now that the listener is in place: a frame that loads fast
  // must not say czo:ready to nobody.
  frames.forEach(function (frame) {
    var src = frame.element.getAttribute("data-src");
    if (src && !frame.element.getAttribute("src")) { frame.element.setAttribute("src", src); }
  });

  // Popup extensions open in a dialog.
  Array.prototype.forEach.call(document.querySelectorAll(".czo-open, .czo-close"), function (button) {
    button.addEventListener("click", function () {
      var dialog = document.getElementById(button.getAttribute("data-frame") + "-dialog");
      if (!dialog) { return; }
      if (button.classList.contains("czo-open")) { dialog.showModal(); } else { dialog.close(); }
    });
  });
})();
