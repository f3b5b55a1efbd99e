package inject

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestPatch: each helper adds a missing (or empty) list or object whole, since JSON patch cannot add below a
// missing member, and otherwise adds item by item; keys are escaped as JSON pointer tokens.
func TestPatch(t *testing.T) {
	raw := []json.RawMessage{json.RawMessage(`{"name":"a"}`), json.RawMessage(`{"name":"b"}`)}
	tests := []struct {
		name  string
		build func(p *patch)
		want  string
	}{
		{"append to a missing list: added whole", func(p *patch) { appendTo(p, "/spec/volumes", 0, raw) },
			`[{"op":"add","path":"/spec/volumes","value":[{"name":"a"},{"name":"b"}]}]`},
		{"append to a list: each at the end", func(p *patch) { appendTo(p, "/spec/volumes", 3, raw) },
			`[{"op":"add","path":"/spec/volumes/-","value":{"name":"a"}},{"op":"add","path":"/spec/volumes/-","value":{"name":"b"}}]`},
		{"append typed items to a missing list", func(p *patch) {
			appendTo(p, "/spec/imagePullSecrets", 0, []corev1.LocalObjectReference{{Name: "r"}})
		}, `[{"op":"add","path":"/spec/imagePullSecrets","value":[{"name":"r"}]}]`},
		{"prepend to a missing list: added whole", func(p *patch) { p.prependTo("/spec/initContainers", 0, raw) },
			`[{"op":"add","path":"/spec/initContainers","value":[{"name":"a"},{"name":"b"}]}]`},
		{"prepend to a list: in order at the front", func(p *patch) { p.prependTo("/spec/initContainers", 2, raw) },
			`[{"op":"add","path":"/spec/initContainers/0","value":{"name":"a"}},{"op":"add","path":"/spec/initContainers/1","value":{"name":"b"}}]`},
		{"move: removed, then its raw JSON inserted", func(p *patch) { p.move("/spec/initContainers", 2, 0, raw[0]) },
			`[{"op":"remove","path":"/spec/initContainers/2"},{"op":"add","path":"/spec/initContainers/0","value":{"name":"a"}}]`},
		{"set a key of a missing object: added whole", func(p *patch) { p.setKey("/spec/nodeSelector", 0, "pool/x", "v") },
			`[{"op":"add","path":"/spec/nodeSelector","value":{"pool/x":"v"}}]`},
		{"set a key: escaped", func(p *patch) { p.setKey("/spec/nodeSelector", 1, "a~b/c", "v") },
			`[{"op":"add","path":"/spec/nodeSelector/a~0b~1c","value":"v"}]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p patch
			tc.build(&p)
			got, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("patch\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestPatchAnnotations: only what differs is written; "" removes; a missing metadata or annotations object is
// added whole.
func TestPatchAnnotations(t *testing.T) {
	want := map[string]string{"podidentity.io/a": "1", "podidentity.io/b": "", "podidentity.io/c": "3"}
	tests := []struct {
		name  string
		have  map[string]string
		shape podShape
		want  string
	}{
		{"no metadata", nil, podShape{}, `[{"op":"add","path":"/metadata","value":{"annotations":{"podidentity.io/a":"1","podidentity.io/c":"3"}}}]`},
		{"no annotations", nil, podShape{hasMetadata: true}, `[{"op":"add","path":"/metadata/annotations","value":{"podidentity.io/a":"1","podidentity.io/c":"3"}}]`},
		{"some right, one forged, one to remove", map[string]string{"podidentity.io/a": "1", "podidentity.io/b": "x", "podidentity.io/c": "forged"}, podShape{hasMetadata: true},
			`[{"op":"add","path":"/metadata/annotations/podidentity.io~1c","value":"3"},{"op":"remove","path":"/metadata/annotations/podidentity.io~1b"}]`},
		{"all right: nothing", map[string]string{"podidentity.io/a": "1", "podidentity.io/c": "3", "other": "x"}, podShape{hasMetadata: true}, `null`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{}
			pod.Annotations = tc.have
			var p patch
			p.annotations(pod, tc.shape, want)
			got, _ := json.Marshal(p)
			if string(got) != tc.want {
				t.Fatalf("patch\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}
