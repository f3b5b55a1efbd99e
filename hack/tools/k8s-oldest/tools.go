//go:build tools

// Package tools keeps the oldest supported Kubernetes release's kube-apiserver in this module's graph.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
