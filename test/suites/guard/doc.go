// Package guard holds the cross-component test of guard mode: the chart's ValidatingAdmissionPolicy (its own
// CEL, rendered by helm), the webhook's injection and the assigner's audit rules, together against a real
// kube-apiserver. It has no code of its own.
package guard
