// Opened straight from disk (file://), browsers refuse fetch() of other pages, which
// Sphinx's search uses only to show a summary under each result: skip the summaries there.
if (window.location.protocol === "file:" && typeof DOCUMENTATION_OPTIONS !== "undefined") {
  DOCUMENTATION_OPTIONS.SHOW_SEARCH_SUMMARY = false;
}
