package desired

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func metaFor(a Assignment) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: a.Name, Namespace: a.Namespace,
		Annotations: map[string]string{ResourceAnnotation: a.Resource.ID()},
	}
}
