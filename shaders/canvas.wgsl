// Canvas of the desktop app: draws the latest preview mosaic into the paint callback's
// viewport with nearest-neighbour upscaling, a faint grid on the soft-token patches, and an
// outline around the patch being sampled next.
//
// The mosaic holds a grid of images of `tile_size` pixels a side. Colours are 8-bit sRGB
// values in an Rgba8Unorm texture. They are written unchanged to the non-sRGB targets that
// egui prefers, and converted to linear values for an sRGB target.

struct Uniforms {
    // Mosaic size in texels.
    texture_size: vec2<f32>,
    // Viewport size in physical pixels.
    viewport_px: vec2<f32>,
    // Side of one image in texels.
    tile_size: f32,
    // Side of one soft-token patch in texels.
    patch_size: f32,
    // Index of the highlighted patch in row-major order within each image, or -1 for none.
    highlight: f32,
    // Opacity of the grid lines, 0 hides them.
    grid_alpha: f32,
    // Colour of the grid lines.
    grid_color: vec4<f32>,
    // Colour of the highlighted patch's outline, with its opacity in alpha.
    highlight_color: vec4<f32>,
    // 1 when the target texture is sRGB, so the output must be linear; else 0.
    srgb_target: f32,
}

@group(0) @binding(0) var<uniform> uniforms: Uniforms;
@group(0) @binding(1) var mosaic: texture_2d<f32>;

struct VertexOutput {
    @builtin(position) position: vec4<f32>,
    // Position in the mosaic, 0..1 on both axes, y down.
    @location(0) uv: vec2<f32>,
}

// One triangle that covers the viewport; the callback sets the viewport to the canvas rect.
@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOutput {
    let corner = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    var out: VertexOutput;
    out.position = vec4<f32>(corner.x * 2.0 - 1.0, 1.0 - corner.y * 2.0, 0.0, 1.0);
    out.uv = corner;
    return out;
}

@fragment
fn fs_main(in: VertexOutput) -> @location(0) vec4<f32> {
    let texel_f = clamp(in.uv * uniforms.texture_size, vec2<f32>(0.0), uniforms.texture_size - 1.0);
    let texel = vec2<i32>(floor(texel_f));
    var color = textureLoad(mosaic, texel, 0).rgb;

    // Distance to the nearest patch edge, in physical pixels.
    let pixels_per_texel = uniforms.viewport_px / uniforms.texture_size;
    let in_patch = in.uv * uniforms.texture_size / uniforms.patch_size;
    let cell = fract(in_patch);
    let edge = min(cell, 1.0 - cell) * uniforms.patch_size * pixels_per_texel;
    let on_grid = min(edge.x, edge.y) < 1.0;
    if on_grid {
        color = mix(color, uniforms.grid_color.rgb, uniforms.grid_alpha);
    }

    if uniforms.highlight >= 0.0 {
        let in_tile = (in.uv * uniforms.texture_size) % vec2<f32>(uniforms.tile_size);
        let cell_index = floor(in_tile / uniforms.patch_size);
        let patches_per_row = uniforms.tile_size / uniforms.patch_size;
        let index = cell_index.y * patches_per_row + cell_index.x;
        let on_outline = min(edge.x, edge.y) < 2.0;
        if abs(index - uniforms.highlight) < 0.5 && on_outline {
            color = mix(color, uniforms.highlight_color.rgb, uniforms.highlight_color.a);
        }
    }
    if uniforms.srgb_target > 0.5 {
        color = linear_from_srgb(color);
    }
    return vec4<f32>(color, 1.0);
}

fn linear_from_srgb(srgb: vec3<f32>) -> vec3<f32> {
    let low = srgb / 12.92;
    let high = pow((srgb + 0.055) / 1.055, vec3<f32>(2.4));
    return select(high, low, srgb <= vec3<f32>(0.04045));
}
