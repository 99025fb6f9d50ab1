//go:build !linux

package lifecycle

import "context"

// HugePages does nothing here: transparent huge pages are a Linux feature.
func HugePages(context.Context) {}
