// Behaviour shared by every page, kept out of inline handlers.
// A form with data-confirm asks before it is sent (deleting, revoking, stopping).
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// A select with data-autosubmit sends its form when it changes (the form still has a button without JavaScript).
document.addEventListener("change", (event) => {
  if (event.target.matches && event.target.matches("select[data-autosubmit]")) event.target.form.submit();
});
