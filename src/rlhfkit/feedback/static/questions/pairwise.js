// pairwise: left / right / tie / both bad (keys 1-4).
rlhfkit.register("pairwise", function (ctx) {
  const pick = ctx.choices(ctx.fieldset);
  const keys = { "1": "left", "2": "right", "3": "tie", "4": "both_bad" };
  return {
    collect: function () {
      return pick.value ? { answer: { choice: pick.value } } : { error: "Choose which response you prefer." };
    },
    key: function (k) { if (!keys[k]) return false; pick.set(keys[k]); return true; },
  };
});
