package kube

// EventTimeout is eventTimeout, for the tests of package kube_test.
const EventTimeout = eventTimeout
