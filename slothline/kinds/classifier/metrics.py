"""Classification metrics: scikit-learn's accuracy, macro and micro F1 and per-class precision, recall and F1
(0-100; a class never predicted has precision 0)."""


def classification_metrics(actual: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Accuracy, macro F1 (the mean F1 of the classes in the test split or the predictions, as scikit-learn
    counts them without `labels`: a class with no test row that is never predicted has no F1 to average),
    micro F1 (from all decisions pooled, which for single-label classes equals accuracy), and per class
    precision, recall, F1 and support (every class, support 0 included)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    percent = lambda value: round(100 * float(value), 2)
    precision, recall, f1, support = precision_recall_fscore_support(actual, predicted, labels=labels, zero_division=0)
    occurring = {*actual, *predicted}
    return {
        "accuracy": percent(accuracy_score(actual, predicted)),
        "macro_f1": percent(f1_score(actual, predicted, labels=[c for c in labels if c in occurring], average="macro",
                                     zero_division=0)),
        "micro_f1": percent(f1_score(actual, predicted, labels=labels, average="micro", zero_division=0)),
        "per_class": {label: {"precision": percent(p), "recall": percent(r), "f1": percent(f), "support": int(n)}
                      for label, p, r, f, n in zip(labels, precision, recall, f1, support)},
    }
