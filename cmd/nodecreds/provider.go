package main

import (
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/config"
	"github.com/nodecreds/nodecreds/internal/provider"
)

func newProviderCmd() *cobra.Command {
	var (
		hostRoot, file string
		cache          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "credential-provider",
		Short: "Kubelet image credential provider plugin answering from the file nodecreds keeps",
		Long: `Speak the kubelet's exec credential provider protocol
(credentialprovider.kubelet.k8s.io/v1): read a CredentialProviderRequest on
stdin, answer with the credentials the kubelet's own matching finds for the
image in --file (the kubelet file nodecreds keeps in sync), with a short
cache duration and cacheKeyType Registry. An image without credentials gets
an empty answer, so the kubelet falls back to its other sources.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cache < 0 {
				return config.UsageError(errBadCache)
			}
			return provider.Serve(cmd.InOrStdin(), cmd.OutOrStdout(), provider.Options{HostRoot: hostRoot, File: file, CacheDuration: cache})
		},
	}
	cmd.Flags().StringVar(&hostRoot, "host-root", "/", "where the node's file system is mounted")
	cmd.Flags().StringVar(&file, "file", "/var/lib/kubelet/config.json", "the config.json nodecreds keeps in sync")
	cmd.Flags().DurationVar(&cache, "cache-duration", 10*time.Second, "how long the kubelet may cache an answer")
	return cmd
}

var errBadCache = errors.New("--cache-duration must not be negative")
