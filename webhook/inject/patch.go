package inject

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// patch is the JSON patch (RFC 6902) a decision builds against the raw pod as the API server sent it. It adds
// what the webhook owns, and removes or moves only what the webhook owns. JSON patch cannot add below a
// missing member, so a list or object the pod does not have yet is added whole.
type patch []jsonpatch.JsonPatchOperation

func (p *patch) add(path string, value any) {
	*p = append(*p, jsonpatch.JsonPatchOperation{Operation: "add", Path: path, Value: value})
}

func (p *patch) remove(path string) {
	*p = append(*p, jsonpatch.JsonPatchOperation{Operation: "remove", Path: path})
}

// appendTo adds items at the end of the list at path, which holds n items: the whole list when it has none.
func appendTo[T any](p *patch, path string, n int, items []T) {
	if n == 0 {
		p.add(path, wholeList(items))
		return
	}
	for _, it := range items {
		p.add(path+"/-", it)
	}
}

// prependTo inserts items, in order, at the front of the list at path, which holds n items.
func (p *patch) prependTo(path string, n int, items []json.RawMessage) {
	if n == 0 {
		p.add(path, jsonList(items))
		return
	}
	for i, it := range items {
		p.add(fmt.Sprintf("%s/%d", path, i), it)
	}
}

// move takes the item at index from out of the list at path and inserts item (its raw JSON, so that no field
// of it is lost) at index to, as counted after the removal.
func (p *patch) move(path string, from, to int, item json.RawMessage) {
	p.remove(fmt.Sprintf("%s/%d", path, from))
	p.add(fmt.Sprintf("%s/%d", path, to), item)
}

// setKey sets key to value in the object at path, which has n members: the whole object when it has none.
func (p *patch) setKey(path string, n int, key, value string) {
	if n == 0 {
		p.add(path, map[string]string{key: value})
		return
	}
	p.add(path+"/"+escape(key), value)
}

// annotations sets the annotations in want (removing those whose value is ""), leaving what already matches
// untouched; a missing metadata or annotations object is added whole.
func (p *patch) annotations(pod *corev1.Pod, shape podShape, want map[string]string) {
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	set := map[string]string{}
	var remove []string
	for _, k := range keys {
		cur, ok := pod.Annotations[k]
		switch v := want[k]; {
		case v == "" && ok:
			remove = append(remove, k)
		case v != "" && (!ok || cur != v):
			set[k] = v
		}
	}
	switch {
	case len(set) == 0 && len(remove) == 0:
		return
	case !shape.hasMetadata:
		p.add("/metadata", map[string]any{"annotations": set})
		return
	case len(pod.Annotations) == 0:
		p.add("/metadata/annotations", set)
		return
	}
	for _, k := range keys {
		if v, ok := set[k]; ok {
			// add replaces an existing member: a value the user forged is overwritten.
			p.add("/metadata/annotations/"+escape(k), v)
		}
	}
	for _, k := range remove {
		p.remove("/metadata/annotations/" + escape(k))
	}
}

// wholeList is the value of a list added whole: raw JSON items are joined without decoding them again.
func wholeList[T any](items []T) any {
	if raw, ok := any(items).([]json.RawMessage); ok {
		return jsonList(raw)
	}
	return items
}

func jsonList(items []json.RawMessage) json.RawMessage {
	n := 2
	for _, it := range items {
		n += len(it) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, '[')
	for i, it := range items {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, it...)
	}
	return append(out, ']')
}

// escape encodes a JSON pointer token (RFC 6901).
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
