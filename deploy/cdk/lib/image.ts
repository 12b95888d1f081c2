import * as ecrAssets from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { AppConfig } from './config';

/**
 * The image of one stage of the repository's Dockerfile, built by `cdk deploy` (not by `cdk synth`,
 * which only copies the build context into cdk.out) and pushed to the bootstrap ECR repository.
 *
 * The context is the repository root. Its .dockerignore already keeps target/, .git/ and
 * everything but the Cargo manifests, src/ and static/ out; `exclude` repeats the large or
 * volatile directories so the asset never depends on that file for them, and keeps deploy/ out
 * so that editing this CDK app does not change the image's hash (no rebuild, no new push).
 */
export function imageFromDockerfile(config: AppConfig, target: 'websocket' | 'queue-consumer'): ecs.ContainerImage {
  return ecs.ContainerImage.fromAsset(config.repoRoot, {
    file: 'Dockerfile',
    target,
    // Build for the tasks' CPU. The Dockerfile's builder stage runs on the machine's own platform
    // and cross-compiles for this one, so an arm64 image builds at native speed on an x86_64
    // machine (and the reverse): no QEMU emulation.
    platform: config.architecture === 'ARM64' ? ecrAssets.Platform.LINUX_ARM64 : ecrAssets.Platform.LINUX_AMD64,
    exclude: ['deploy', 'target', '.git', '**/node_modules', '**/cdk.out'],
  });
}

/** The task definition's runtime platform, matching the image's architecture. */
export function runtimePlatform(config: AppConfig): ecs.RuntimePlatform {
  return {
    operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
    // Graviton (ARM64) Fargate costs about 20 % less per vCPU-hour and GB-hour than x86_64.
    cpuArchitecture: config.architecture === 'ARM64' ? ecs.CpuArchitecture.ARM64 : ecs.CpuArchitecture.X86_64,
  };
}
