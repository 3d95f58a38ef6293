/*
 * czo-extension.js: the app side of the c-zo extension bridge, for app authors.
 *
 *   <script src="czo-extension.js"></script>
 *   <script>
 *     var czo = CzoExtension.connect();
 *     czo.onContext(function (context) { ... context.shop.id ... });
 *     czo.notify("Saved", "success");
 *     czo.navigate("/dashboard/shops/1");
 *     czo.requestToken().then(function (token) { fetch(api, {headers: {Authorization: "Bearer " + token}}) });
 *   </script>
 *
 * The dashboard's origin comes from the czo_host_origin query parameter of the iframe URL;
 * messages are posted to that origin only, and accepted only from the parent window at it.
 * The frame's height is sent to the dashboard whenever it changes.
 */
(function (global) {
  "use strict";

  function hostOriginFromUrl() {
    var params = new URLSearchParams(global.location.search);
    var origin = params.get("czo_host_origin") || "";
    return /^https?:\/\/[^\/?#]+$/.test(origin) ? origin : "";
  }

  function connect(options) {
    options = options || {};
    var hostOrigin = options.hostOrigin || hostOriginFromUrl();
    if (!hostOrigin) { throw new Error("czo-extension: no dashboard origin (czo_host_origin)"); }
    var parentWindow = global.parent;
    var contextHandlers = [];
    var context = null;
    var pendingTokens = [];
    var lastHeight = 0;

    function post(type, payload) {
      parentWindow.postMessage({ v: 1, type: type, payload: payload || {} }, hostOrigin);
    }

    global.addEventListener("message", function (event) {
      if (event.source !== parentWindow || event.origin !== hostOrigin) { return; }
      var message = event.data;
      if (!message || typeof message !== "object" || message.v !== 1) { return; }
      if (message.type === "czo:context") {
        context = message.payload || {};
        contextHandlers.forEach(function (handler) { handler(context); });
      } else if (message.type === "czo:token") {
        var waiting = pendingTokens.shift();
        if (!waiting) { return; }
        if (message.payload && message.payload.token) { waiting.resolve(message.payload.token); }
        else { waiting.reject(new Error((message.payload && message.payload.error) || "no token")); }
      }
    });

    function contentHeight() {
      // The html element's box is as tall as the content, not the iframe's viewport.
      return global.document.documentElement.getBoundingClientRect().height;
    }

    function resize(height) {
      var wanted = Math.ceil(height || contentHeight());
      if (wanted !== lastHeight) {
        lastHeight = wanted;
        post("czo:resize", { height: wanted });
      }
    }

    if (options.autoResize !== false && global.ResizeObserver) {
      var observer = new global.ResizeObserver(function () { resize(); });
      observer.observe(global.document.documentElement);
      if (global.document.body) { observer.observe(global.document.body); }
    }

    post("czo:ready", { version: 1 });

    return {
      hostOrigin: hostOrigin,
      context: function () { return context; },
      onContext: function (handler) {
        contextHandlers.push(handler);
        if (context) { handler(context); }
      },
      resize: resize,
      notify: function (message, level) { post("czo:notify", { message: String(message), level: level || "info" }); },
      navigate: function (path) { post("czo:navigate", { path: String(path) }); },
      requestToken: function () {
        return new Promise(function (resolve, reject) {
          pendingTokens.push({ resolve: resolve, reject: reject });
          post("czo:request-token", {});
        });
      }
    };
  }

  global.CzoExtension = { connect: connect, version: 1 };
})(window);
