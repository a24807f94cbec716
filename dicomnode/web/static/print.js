// Report page: the Print button (no inline event handlers: the Content-Security-Policy forbids them).
document.querySelectorAll("button[data-print]").forEach(function (button) {
  button.addEventListener("click", function () { window.print(); });
});
